"""Training and fine-tuning on DAVIS-layout videos, with the TinySAM 2 memory in the loop."""
