"""``modelsteal`` entry point.

Subcommands are discovered: every module in :mod:`modelsteal.cli` that defines
``add_parser(subparsers) -> argparse.ArgumentParser`` and ``run(args) -> int`` is one subcommand, so a new
command is a new file. Errors a user can fix (bad options, missing files, missing datasets, a server that
is not there) are printed as one line on stderr with exit code 2, never as a traceback; live progress bars
are closed first so that the message starts a line of its own.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence
from typing import NoReturn

import modelsteal.cli as cli_pkg

#: what a user can fix; a ``ConnectionError`` only when it is the HTTP client's "server unreachable" (a stray
#: ``ConnectionResetError`` inside the code is a bug and keeps its traceback), never a ``KeyError``.
USER_ERRORS = (ValueError, FileNotFoundError, PermissionError, ConnectionError)


def _is_user_error(error: BaseException) -> bool:
    if not isinstance(error, ConnectionError):
        return True
    from modelsteal.serve.client import ServerUnreachableError

    return isinstance(error, ServerUnreachableError)


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors (a missing or unknown flag, a value of the wrong type, two
    flags that exclude each other) are one line on stderr, ``modelsteal CMD: error: …``, with exit code 2,
    like every other user mistake; ``-h`` still prints the full usage. Subcommand parsers inherit it."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} -h)\n")


def build_parser() -> argparse.ArgumentParser:
    from modelsteal import __version__

    parser = OneLineParser(prog="modelsteal", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"modelsteal {__version__}")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="torch CPU threads (default: torch's choice; 1 is fastest on a machine busy with other jobs)",
    )
    parser.add_argument(
        "--deterministic",
        action="store_true",
        help="deterministic kernels only (torch.use_deterministic_algorithms), cuDNN autotuning off, "
        "fixed thread count (--threads, default 1); same inputs give bit-identical results on one machine",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(cli_pkg.__path__), key=lambda m: m.name):
        if info.name in ("main",) or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"modelsteal.cli.{info.name}")
        if hasattr(module, "add_parser") and hasattr(module, "run"):
            p = module.add_parser(sub)
            p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    if args.deterministic:
        from modelsteal.determinism import enable_determinism

        enable_determinism(threads=args.threads)
    try:
        return int(args._run(args) or 0)
    except BrokenPipeError:  # output piped into `head` and friends (a ConnectionError: caught first)
        return 0
    except USER_ERRORS as e:
        close_progress_bars()
        if not _is_user_error(e):
            raise
        print(f"modelsteal {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        close_progress_bars()
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        close_progress_bars()
        from modelsteal.experiment.executors import WorkerDiedError

        if isinstance(e, WorkerDiedError):  # not the user's mistake (exit 1), but nothing to debug either
            print(f"modelsteal {args.command}: {e}", file=sys.stderr)
            return 1
        raise


def close_progress_bars() -> None:
    """Close every live tqdm bar (an exception leaves them open) so the next line on stderr starts clean.

    A closed bar erases itself on a terminal; elsewhere (a log file, a pipe) its last state stays on the
    current line, so a newline ends it there.
    """
    tqdm_module = sys.modules.get("tqdm")
    if tqdm_module is None:
        return
    bars = list(getattr(tqdm_module.tqdm, "_instances", ()))
    erased = [bar for bar in bars if not bar.leave]  # a kept bar (leave=True) ends its line itself
    for bar in bars:
        bar.close()
    if erased and not sys.stderr.isatty():
        sys.stderr.write("\n")
        sys.stderr.flush()


if __name__ == "__main__":
    sys.exit(main())
