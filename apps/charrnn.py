"""``python -m tapegrad charrnn``: a character-level LSTM language model (char-rnn) trained with TBPTT.

Model: Embedding(V, E) -> LSTM(E, H, num_layers) -> Linear(H, V), softmax cross-entropy on the next
character, Adam, gradient-norm clipping.

Data order: the first 90% of the text is cut into ``batch`` equal streams laid side by side (row b of a
[batch, L] array is one contiguous stretch of text). Training walks the streams left to right in
consecutive windows of ``seq_len`` characters with :class:`tapegrad.layers.tbptt.TBPTT` (k1 = k2 =
seq_len), so the LSTM state at the end of one window is the (detached) start of the next; at the end of
the streams it starts over from a zero state. The last 10% of the text is held out: the validation
loss is the mean cross-entropy over the first ``val_chunks`` windows of its own ``batch`` streams,
state carried, from a zero state, so it is the same set of characters for every run.

Everything that decides the data order is a plain function of (text, batch, seq_len), so the PyTorch
twin in ``benchmarks/charrnn_vs_torch.py`` sees exactly the same windows.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from .. import engine as E
from ..engine import nn as F
from ..engine.backend import check_device
from ..engine.tensor import Tensor, no_grad
from ..layers.basic import Embedding, Linear
from ..layers.module import Module
from ..layers.optim import Adam
from ..layers.tbptt import TBPTT

VAL_FRACTION = 0.1


# ---- BLAS threads --------------------------------------------------------------------------------------------

def _openblas():
    """numpy's OpenBLAS as (set_num_threads, get_num_threads) ctypes functions, or None."""
    import ctypes
    try:
        with open("/proc/self/maps") as f:
            paths = sorted({line.split()[-1] for line in f if "openblas" in line.lower() and "/" in line})
    except OSError:
        return None
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix, suffix in (("scipy_openblas", "64_"), ("openblas", ""), ("openblas", "64_")):
            setter = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
            getter = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
            if setter is not None and getter is not None:
                return setter, getter
    return None


@contextlib.contextmanager
def blas_threads(n: int | None) -> Iterator[None]:
    """Run the block with numpy's OpenBLAS limited to ``n`` threads (``None`` or 0: leave it alone).

    A char-LSTM step is a chain of small GEMMs ([B, H] x [H, 4H] per time step), where OpenBLAS's
    second thread costs more than it brings: on a 2-core CPU one thread made a step 3-4x faster.
    """
    blas = _openblas() if n else None
    if blas is None:
        yield
        return
    setter, getter = blas
    before = getter()
    setter(int(n))
    try:
        yield
    finally:
        setter(before)


# ---- data ------------------------------------------------------------------------------------------------------

def load_text_ids(name_or_path: str) -> tuple[list[str], dict[str, int], np.ndarray]:
    """(vocab, stoi, ids) for a text file, or for a data set shipped with tapegrad ('tinyshakespeare').

    Raises FileNotFoundError for a path that does not exist.
    """
    from ..datasets import load_text
    corpus = load_text(name_or_path)
    return list(corpus.vocab), dict(corpus.stoi), np.asarray(corpus.data, dtype=np.int64)


def split_train_val(ids: np.ndarray, val_fraction: float = VAL_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """The first (1 - val_fraction) of the text for training, the rest for validation."""
    n_val = round(len(ids) * val_fraction)
    return ids[:len(ids) - n_val], ids[len(ids) - n_val:]


def make_streams(ids: np.ndarray, batch: int) -> np.ndarray:
    """[batch, L]: the text cut into ``batch`` contiguous streams (the tail that does not divide is dropped)."""
    length = len(ids) // batch
    return np.ascontiguousarray(np.asarray(ids[:batch * length], dtype=np.int64).reshape(batch, length))


def n_windows(streams: np.ndarray, seq_len: int) -> int:
    """How many whole windows of seq_len inputs (and their next-character targets) the streams hold."""
    return (streams.shape[1] - 1) // seq_len


def window(streams: np.ndarray, k: int, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Window k: inputs [batch, seq_len] and next-character targets of the same shape."""
    a = k * seq_len
    return streams[:, a:a + seq_len], streams[:, a + 1:a + seq_len + 1]


# ---- model ---------------------------------------------------------------------------------------------------

class CharLSTM(Module):
    """Embedding(V, E) -> LSTM(E, H, num_layers, batch_first) -> Linear(H, V).

    ``forward(ids [B, T], state=None) -> (logits [B, T, V], (h_n, c_n))``. Parameter names match the
    PyTorch model ``embedding`` / ``lstm`` / ``fc`` so state dicts carry over.
    """

    def __init__(self, vocab_size: int, hidden_size: int = 128, embed_size: int = 32, num_layers: int = 1,
                 dtype: Any = np.float32) -> None:
        from ..layers.rnn import LSTM
        super().__init__(dtype)
        self.vocab_size, self.hidden_size, self.embed_size = vocab_size, hidden_size, embed_size
        self.num_layers = num_layers
        self.embedding = Embedding(vocab_size, embed_size, dtype=dtype)
        self.lstm = LSTM(embed_size, hidden_size, num_layers=num_layers, batch_first=True, dtype=dtype)
        self.fc = Linear(hidden_size, vocab_size, dtype=dtype)

    def forward(self, ids: Any, state: Any = None) -> tuple[Tensor, Any]:
        out, state = self.lstm(self.embedding(ids), state)
        b, t, h = out.shape
        # A 2-D GEMM: numpy runs [B, T, H] @ W^T (a transposed view) as a slow loop, not through BLAS.
        return self.fc(out.reshape(b * t, h)).reshape(b, t, self.vocab_size), state


def sequence_loss(model: CharLSTM, x: np.ndarray, y: np.ndarray, state: Any = None) -> tuple[Tensor, Any]:
    """Mean next-character cross-entropy over a [B, T] window, and the state after it."""
    logits, state = model(x, state)
    b, t, v = logits.shape
    return F.cross_entropy(logits.reshape(b * t, v), y.reshape(-1)), state


def evaluate(model: CharLSTM, streams: np.ndarray, seq_len: int, n_chunks: int) -> float:
    """Mean cross-entropy over the first ``n_chunks`` windows of ``streams``, state carried from zero."""
    state, total = None, 0.0
    with no_grad():
        for k in range(n_chunks):
            x, y = window(streams, k, seq_len)
            loss, state = sequence_loss(model, x, y, state)
            total += loss.item()
    return total / n_chunks


def _as_vocab(vocab_or_stoi: Any) -> tuple[list[str], dict[str, int]]:
    if isinstance(vocab_or_stoi, dict):
        itos = [None] * len(vocab_or_stoi)
        for ch, i in vocab_or_stoi.items():
            itos[i] = ch
        return itos, dict(vocab_or_stoi)
    vocab = list(vocab_or_stoi)
    return vocab, {ch: i for i, ch in enumerate(vocab)}


def sample(model: CharLSTM, vocab: Any, prime: str = "\n", n: int = 200, temperature: float = 1.0,
           seed: int | None = 0) -> str:
    """Generate ``n`` characters after ``prime`` (one-to-many): feed the prime through the model, then
    draw each next character from softmax(logits / temperature) and feed it back in.

    ``vocab`` is the list of characters (index -> char) or the stoi dict (char -> index). Characters of
    the prime that are not in the vocabulary are skipped. ``temperature`` 0 takes the most likely
    character every step. Returns only the generated characters.
    """
    itos, stoi = _as_vocab(vocab)
    rng = np.random.default_rng(seed)
    ids = [stoi[ch] for ch in prime if ch in stoi] or [int(rng.integers(len(itos)))]
    was_training = model.training
    model.eval()
    out = []
    with no_grad():
        logits, state = model(np.array([ids], dtype=np.int64))
        last = logits.numpy()[0, -1].astype(np.float64)
        for _ in range(n):
            if temperature <= 0:
                nxt = int(np.argmax(last))
            else:
                z = last / temperature
                p = np.exp(z - z.max())
                nxt = int(rng.choice(len(p), p=p / p.sum()))
            out.append(itos[nxt])
            logits, state = model(np.array([[nxt]], dtype=np.int64), state)
            last = logits.numpy()[0, -1].astype(np.float64)
    model.train(was_training)
    return "".join(out)


# ---- training ----------------------------------------------------------------------------------------------------

def prepare(ids: np.ndarray, batch: int, seq_len: int, val_chunks: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(train streams, val streams, number of val windows), with clear errors for a text too short."""
    train_ids, val_ids = split_train_val(ids)
    train_streams = make_streams(train_ids, batch)
    if n_windows(train_streams, seq_len) < 1:
        raise ValueError(f"the text is too short: {len(train_ids)} training characters cannot fill "
                         f"{batch} streams of {seq_len + 1} (lower --batch or --seq-len)")
    val_streams = make_streams(val_ids, batch) if len(val_ids) >= batch else np.zeros((batch, 0), np.int64)
    n_val = min(val_chunks, n_windows(val_streams, seq_len)) if val_streams.shape[1] else 0
    if n_val < 1:
        raise ValueError(f"the text is too short: the held-out last 10% ({len(val_ids)} characters) cannot "
                         f"fill {batch} streams of {seq_len + 1} (lower --batch or --seq-len)")
    return train_streams, val_streams, n_val


def train(ids: np.ndarray, vocab_size: int, steps: int, hidden: int = 128, embed: int = 32, num_layers: int = 1,
          seq_len: int = 64, batch: int = 32, lr: float = 3e-3, clip: float = 5.0, seed: int = 0,
          val_chunks: int = 8, progress: Callable[[int, float], None] | None = None,
          model: CharLSTM | None = None, device: str = "cpu") -> dict:
    """Train a CharLSTM for ``steps`` TBPTT windows; returns a dict with the model and the losses.

    The model is ``CharLSTM(vocab_size, hidden, embed, num_layers)`` initialised after
    ``manual_seed(seed)``, unless ``model`` is given (then it is trained as it is). ``progress(step,
    loss)`` is called after every step (a tqdm bar, a logger). ``device='cuda'`` trains on the GPU (each
    window's character ids go over as they are used; a step's time includes reading its loss back).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    train_streams, val_streams, n_val = prepare(ids, batch, seq_len, val_chunks)
    device = check_device(device)
    if model is None:
        E.manual_seed(seed)
        model = CharLSTM(vocab_size, hidden, embed, num_layers)
    model.to(device)
    opt = Adam(model.parameters(), lr=lr)

    def segment(start: int, stop: int, state: Any, with_loss: bool) -> tuple[Tensor, Any]:
        x = train_streams[:, start:stop]
        y = train_streams[:, start + 1:stop + 1]
        return sequence_loss(model, x, y, state)

    per_epoch = n_windows(train_streams, seq_len) * seq_len
    tb = TBPTT(segment, opt, k1=seq_len, clip=clip, length=per_epoch)
    losses, times = [], []
    for step in range(steps):
        if tb.done:
            tb.reset()  # the streams are used up: start another pass from a zero state
        t0 = time.perf_counter()
        losses.append(tb.step())
        times.append(time.perf_counter() - t0)
        if progress is not None:
            progress(step, losses[-1])
    model.eval()
    val_loss = evaluate(model, val_streams, seq_len, n_val)
    model.train()
    tail = max(1, min(10, steps // 10 or 1))
    timed = times[1:] if len(times) > 1 else times  # the first step pays for JIT compilation
    return {
        "model": model,
        "losses": losses,
        "train_loss": float(np.mean(losses[-tail:])),
        "val_loss": float(val_loss),
        "ms_per_step": 1000.0 * float(np.mean(timed)),
        "first_step_s": times[0],
        "val_chunks": n_val,
    }


# ---- command line --------------------------------------------------------------------------------------------------

def _positive(kind: type) -> Callable[[str], Any]:
    def parse(s: str) -> Any:
        try:
            v = kind(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {s!r}") from None
        if not v > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {s}")
        return v
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tapegrad charrnn",
                                description="Train a character-level LSTM language model with truncated BPTT.")
    p.add_argument("--data", default="tinyshakespeare",
                   help="a UTF-8 text file, or 'tinyshakespeare' (shipped) (default: %(default)s)")
    p.add_argument("--steps", type=_positive(int), default=300, help="training windows (default: %(default)s)")
    p.add_argument("--hidden", type=_positive(int), default=128, help="LSTM hidden size (default: %(default)s)")
    p.add_argument("--embed", type=_positive(int), default=32, help="embedding size (default: %(default)s)")
    p.add_argument("--layers", type=_positive(int), default=1, help="LSTM layers (default: %(default)s)")
    p.add_argument("--seq-len", type=_positive(int), default=64,
                   help="TBPTT window: characters per update and backprop length (default: %(default)s)")
    p.add_argument("--batch", type=_positive(int), default=32, help="parallel streams (default: %(default)s)")
    p.add_argument("--lr", type=_positive(float), default=3e-3, help="Adam learning rate (default: %(default)s)")
    p.add_argument("--clip", type=_positive(float), default=5.0, help="gradient-norm clip (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="initialisation seed (default: %(default)s)")
    p.add_argument("--val-chunks", type=_positive(int), default=8,
                   help="held-out windows in the validation loss (default: %(default)s)")
    p.add_argument("--sample", type=int, default=0, metavar="N", help="print N sampled characters at the end")
    p.add_argument("--temperature", type=float, default=0.8, help="sampling temperature (default: %(default)s)")
    p.add_argument("--blas-threads", type=int, default=1, metavar="N",
                   help="OpenBLAS threads while training; 1 is fastest for these small GEMMs on a small CPU, "
                        "0 leaves numpy's setting alone (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print one JSON object with the results")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to train (default: %(default)s)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.seed < 0:
        parser.error(f"--seed must be >= 0, got {args.seed}")
    if args.blas_threads < 0:
        parser.error(f"--blas-threads must be >= 0, got {args.blas_threads}")
    try:
        check_device(args.device)
    except RuntimeError as e:  # no cupy or no GPU, said in one line
        print(f"charrnn: error: {e}", file=sys.stderr)
        return 1
    try:
        vocab, _, ids = load_text_ids(args.data)
    except FileNotFoundError as e:
        print(f"charrnn: error: file not found: {e.filename or args.data}", file=sys.stderr)
        return 1
    except (OSError, UnicodeDecodeError, ValueError) as e:
        print(f"charrnn: error: cannot read {args.data}: {e}", file=sys.stderr)
        return 1

    log_every = max(1, args.steps // 10)

    def progress(step: int, loss: float) -> None:
        if not args.json and (step + 1) % log_every == 0:
            print(f"step {step + 1:5d}  train loss {loss:.4f}", flush=True)

    try:
        with blas_threads(args.blas_threads):
            res = train(ids, len(vocab), args.steps, hidden=args.hidden, embed=args.embed,
                        num_layers=args.layers, seq_len=args.seq_len, batch=args.batch, lr=args.lr, clip=args.clip,
                        seed=args.seed, val_chunks=args.val_chunks, progress=progress, device=args.device)
            text = sample(res["model"], vocab, prime="\n", n=args.sample, temperature=args.temperature,
                          seed=args.seed) if args.sample > 0 else None
    except ValueError as e:
        print(f"charrnn: error: {e}", file=sys.stderr)
        return 1
    if args.json:
        out = {k: res[k] for k in ("train_loss", "val_loss", "ms_per_step")}
        out.update(steps=args.steps, vocab_size=len(vocab), chars=len(ids), hidden=args.hidden,
                   seq_len=args.seq_len, batch=args.batch)
        if text is not None:
            out["sample"] = text
        print(json.dumps(out))
    else:
        print(f"train loss {res['train_loss']:.4f}  val loss {res['val_loss']:.4f}  "
              f"{res['ms_per_step']:.1f} ms/step  (vocab {len(vocab)}, {len(ids):,} characters)")
        if text is not None:
            print("--- sample ---")
            print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
