"""torchrun for `--nproc N`, with the command line handed to the ranks untouched.

    python -m vaecli.cli.torchrun NPROC ARG...   ~   torchrun --standalone --nproc_per_node NPROC -m vaecli ARG...

torchrun's own parser reads every option of the command line, also those after the
script, and stops at one of ours that abbreviates two of its own (``--monitor``:
``--monitor-interval`` and ``--monitor_interval``); here it parses only its own options.
"""

import sys


def main(argv):
    from torch.distributed import run as torchrun

    nproc, args = argv[0], argv[1:]
    options = torchrun.parse_args(["--standalone", f"--nproc_per_node={nproc}", "-m", "vaecli"])
    options.training_script_args = list(args)
    torchrun.run(options)


if __name__ == "__main__":
    main(sys.argv[1:])
