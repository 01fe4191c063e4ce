"""TinySAM 2 memory: which frames to keep and how few tokens to keep of them."""
