"""The `tinysam2` command line (placeholder until the subcommands land)."""
import argparse


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="tinysam2")
    parser.parse_args(argv)
    return 0
