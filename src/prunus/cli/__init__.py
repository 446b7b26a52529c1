"""The ``prunus`` command (also ``python -m prunus``): one module per command in this package.

Every user mistake ends in one line on stderr and exit code 2; a traceback means
a bug in prunus. Each command module has ``add_parsers(sub)`` and ``COMMANDS``
(command name -> function of the parsed arguments returning the exit code).
"""

from __future__ import annotations

import gc
import sys
from typing import Sequence

import torch.distributed as dist

from prunus import __version__
from prunus.cli import audit, bcnn, defend, evaluate, export, listing, prune, quantize, report, surgery, train
from prunus.cli.args import Parser
from prunus.errors import PrunusError

EXIT_USER_ERROR = 2
MODULES = (train, evaluate, prune, quantize, surgery, export, defend, audit, report, bcnn, listing)
COMMANDS = {name: run for module in MODULES for name, run in module.COMMANDS.items()}


def build_parser() -> Parser:
    parser = Parser(prog="prunus", description="Optimization-based model compression for PyTorch.")
    parser.add_argument("--version", action="version", version=f"prunus {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for module in MODULES:
        module.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return EXIT_USER_ERROR
        code = COMMANDS[args.command](args)
        _wait_for_every_rank()
        return code
    except PrunusError as e:
        print(f"prunus: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("prunus: interrupted", file=sys.stderr)
        return 130
    finally:
        _leave_process_group()


def _wait_for_every_rank() -> None:
    """Under torchrun, a rank that is done waits for the others (rank 0 still writes): a process group torn
    down while a peer is busy can abort gloo's threads."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _leave_process_group() -> None:
    """Drop the job's DDP wrappers first: one still alive keeps gloo's worker threads alive until the
    interpreter shuts down, and tearing them down then aborts the process (seen as SIGABRT on a rank)."""
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()
