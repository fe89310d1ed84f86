"""Command line: ``python -m lens "PROMPT" --model NAME_OR_DIR``.

Every failure is one line on stderr and exit code 2; no tracebacks.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lens.architectures import listing
from lens.backend import POINTS
from lens.engine import run_lens
from lens.errors import LensError
from lens.exports import safe_csv
from lens.model import DEFAULT_MODEL, load_model
from lens.result import LensResult
from lens.settings import Settings


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse would print the usage block too
        raise LensError(f"{message} (see python -m lens --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="python -m lens",
        description="Logit lens: the model's next-token guess after every layer, for each position of a prompt.",
    )
    parser.add_argument(
        "prompt", nargs="?", help="the text to read; '-' reads it from standard input (or use --prompt-file)"
    )
    parser.add_argument("--prompt-file", type=Path, metavar="FILE", help="read the prompt from this UTF-8 file")
    parser.add_argument(
        "--list-architectures",
        action="store_true",
        help="list every model architecture: exact, approximate or unsupported (with why), and an example model",
    )
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"Hugging Face id, model folder, or 'demo' for the bundled offline model (default {DEFAULT_MODEL})",
    )
    parser.add_argument("--top-k", type=int, default=5, help="how many top tokens to keep per cell (default 5)")
    parser.add_argument(
        "--target",
        action="append",
        default=[],
        metavar="TOKEN",
        help="a token to track (probability and rank in every cell); repeatable",
    )
    bos = parser.add_mutually_exclusive_group()
    bos.add_argument(
        "--no-bos",
        dest="prepend_bos",
        action="store_const",
        const=False,
        help="do not prepend the beginning-of-sequence token",
    )
    bos.add_argument(
        "--bos",
        dest="prepend_bos",
        action="store_const",
        const=True,
        help="prepend the beginning-of-sequence token even if the model does not by default",
    )
    parser.add_argument(
        "--points",
        nargs="+",
        default=["resid_post"],
        choices=POINTS,
        help="residual points to read: resid_pre (embeddings), resid_mid (after attention), resid_post",
    )
    parser.add_argument("--format", choices=("table", "csv", "json"), default="table", help="output format")
    parser.add_argument("--out", type=Path, help="write to this file instead of standard output")
    parser.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (default: automatic)")
    parser.add_argument(
        "--backend",
        choices=("transformer_lens", "nnsight"),
        default=None,
        help="transformer_lens (default) or nnsight; --remote implies nnsight",
    )
    parser.add_argument(
        "--remote",
        action="store_true",
        help="run on NDIF through nnsight (needs NDIF_API_KEY); only the per-cell statistics come back",
    )
    return parser


def format_table(result: LensResult) -> str:
    """Top-1 token per cell, output row first, as in the dashboard's heatmap."""
    header = ["layer", *result.tokens]
    body = [
        [label, *(f"{tok} {p:.2f}" for tok, p in zip(result.top1_tokens[r], result.top1_probs[r], strict=True))]
        for r, label in reversed(list(enumerate(result.layers)))
    ]
    widths = [max(len(row[c]) for row in [header, *body]) for c in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in [header, *body]]
    for t, name in enumerate(result.targets):
        ranks = " ".join(str(int(x)) for x in result.target_ranks[t, :, -1])
        lines.append(f"target {name}: rank at the last position, bottom row first: {ranks}")
    return "\n".join(lines) + "\n"


def render(result: LensResult, fmt: str) -> str:
    if fmt == "json":
        return result.to_json()
    if fmt == "csv":
        return safe_csv(result.to_frame())
    return format_table(result)


def quiet_libraries() -> None:
    """Keep library progress bars and advice off the terminal: errors must stay one line."""
    import logging
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    logging.getLogger().setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


def _status_to_stderr(message: str, fraction: float | None) -> None:
    """An NDIF job's status (queued, running), one line each, off the result's stream."""
    print(f"ndif: {message}", file=sys.stderr)


def read_prompt(argument: str | None, prompt_file: Path | None) -> str:
    """The prompt from the command line, a file, or standard input ('-'): the OS caps arguments near 128 KiB."""
    if (argument is None) == (prompt_file is None):
        raise LensError("Give the prompt as an argument, '-' for standard input, or --prompt-file FILE (one of them).")
    if prompt_file is not None:
        data, source = prompt_file.read_bytes(), str(prompt_file)
    elif argument == "-":
        data, source = sys.stdin.buffer.read(), "standard input"
    else:
        return argument
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LensError(f"The prompt in {source} is not UTF-8 text (byte {exc.start + 1}).") from exc


def main(argv: list[str] | None = None) -> int:
    quiet_libraries()
    try:
        args = build_parser().parse_args(argv)
        if args.list_architectures:
            sys.stdout.write(listing() + "\n")
            return 0
        prompt = read_prompt(args.prompt, args.prompt_file)
        backend = args.backend or ("nnsight" if args.remote else "transformer_lens")
        settings, problems = Settings.from_environment()
        for problem in problems:
            print(f"warning: setting ignored: {problem}", file=sys.stderr)
        model = load_model(
            args.model,
            device=args.device,
            backend=backend,
            remote=args.remote,
            api_key=settings.ndif_api_key,
            max_model_bytes=settings.max_model_bytes,
        )
        result = run_lens(
            model,
            prompt,
            top_k=args.top_k,
            targets=args.target,
            prepend_bos=args.prepend_bos,
            points=args.points,
            progress=_status_to_stderr if args.remote else None,
        )
        for warning in result.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        text = render(result, args.format)
        if args.out is None:
            sys.stdout.write(text)
        else:
            args.out.write_text(text, encoding="utf-8")
    except LensError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {exc.strerror or exc} ({exc.filename or 'output'})", file=sys.stderr)
        return 2
    return 0
