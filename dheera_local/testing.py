"""Offline model builders for tests and benchmarks (no hub access needed).

* :func:`build_cross_encoder` saves a tiny random-weight BERT or XLM-RoBERTa cross-encoder
  (``...ForSequenceClassification``, one logit) with a tokenizer trained on a word list.
* :func:`build_twin` saves an *architecture twin* of a real reranker: random weights in the real
  model's exact shape. Its speed is real, its scores are not.
* :func:`install_in_hub_cache` lays a model folder out as a huggingface_hub cache entry
  (``models--ORG--NAME/{blobs,snapshots/<rev>,refs/main}``) so discovery by hub id is exercised.
* :func:`train_keyword_reranker` trains a tiny cross-encoder to score documents that contain a
  keyword high: a model with a real signal, for tests whose claims are about ranking.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
from collections.abc import Iterable
from pathlib import Path

WORDS = (
    "the of and to in is was for on that with as by at from his her it an are were which be this has had "
    "capital city state country island islands ocean pacific nevada america american united states "
    "washington carson saipan commonwealth northern mariana group punishment existed since before "
    "what where when who how why many much people live population river mountain lake north south east "
    "west paris france london england berlin germany rome italy madrid spain tokyo japan china beijing "
    "museum famous known history war king queen president government law court money bank market price "
    "water fire earth air sun moon star planet space science physics chemistry biology medicine doctor "
    "school student teacher book library music song art film movie game sport football team player "
    "computer software data network internet model search rank query document answer question learning "
    "deep neural machine language text word sentence paragraph fast slow small large big little old new "
    "good bad first last long short high low hot cold red blue green black white animal dog cat bird fish "
    "tree flower food bread apple coffee tea house home car train road bridge port ship plane airport "
    "day night year month week time hour minute morning evening summer winter spring autumn "
    "one two three four five six seven eight nine ten hundred thousand million"
).split()


def train_tokenizer(arch: str, words: Iterable[str] = WORDS, vocab_size: int = 2000):  # noqa: ANN201
    """A fast tokenizer for ``arch`` ("bert" WordPiece, "xlm-roberta" Unigram) trained on ``words``."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    corpus = list(words)
    if arch == "bert":
        from transformers import BertTokenizerFast

        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        tok.train_from_iterator(corpus, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials))
        return BertTokenizerFast(vocab=tok.get_vocab(), do_lower_case=True)
    if arch == "xlm-roberta":
        from transformers import XLMRobertaTokenizerFast

        tok = Tokenizer(models.Unigram())
        tok.normalizer = normalizers.Lowercase()
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=["<unk>"], unk_token="<unk>")
        tok.train_from_iterator(corpus, trainer)
        pieces = (
            [(p, s) for p, s in tok.get_model_vocab_scores() if p != "<unk>"]
            if hasattr(tok, "get_model_vocab_scores")
            else _unigram_pieces(tok)
        )
        vocab = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), *pieces, ("<mask>", 0.0)]
        return XLMRobertaTokenizerFast(vocab=vocab)
    raise ValueError(f"arch must be 'bert' or 'xlm-roberta', got {arch!r}")


def _unigram_pieces(tok) -> list[tuple[str, float]]:  # noqa: ANN001
    import json

    model = json.loads(tok.to_str())["model"]
    return [(piece, float(score)) for piece, score in model["vocab"] if piece != "<unk>"]


def _model_config(
    arch: str,
    tokenizer,
    layers: int,
    hidden: int,
    heads: int,
    intermediate: int,  # noqa: ANN001
    max_position: int,
    num_labels: int,
    vocab_size: int | None,
):  # noqa: ANN202
    vocab = max(vocab_size or 0, len(tokenizer))
    if arch == "bert":
        from transformers import BertConfig

        return BertConfig(
            vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
            intermediate_size=intermediate, max_position_embeddings=max_position, num_labels=num_labels,
            pad_token_id=tokenizer.pad_token_id,
        )  # fmt: skip
    from transformers import XLMRobertaConfig

    return XLMRobertaConfig(
        vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=intermediate, max_position_embeddings=max_position + 2, type_vocab_size=1,
        num_labels=num_labels, pad_token_id=tokenizer.pad_token_id, bos_token_id=0, eos_token_id=2,
    )  # fmt: skip


def build_cross_encoder(
    folder: str | Path,
    *,
    arch: str = "bert",
    layers: int = 2,
    hidden: int = 32,
    heads: int = 2,
    intermediate: int | None = None,
    max_position: int = 512,
    num_labels: int = 1,
    seed: int = 0,
    words: Iterable[str] = WORDS,
    vocab_size: int | None = None,
    activation_fn: str | None = None,
    tokenizer_vocab_size: int = 2000,
) -> Path:
    """Save a random-weight cross-encoder (``*ForSequenceClassification``) into ``folder``.

    Args:
        folder: Where to save it (created).
        arch: ``"bert"`` or ``"xlm-roberta"``.
        layers, hidden, heads, intermediate: Encoder shape (intermediate defaults to 4 x hidden).
        max_position: Longest input in tokens.
        num_labels: Outputs of the head (rerankers have 1).
        seed: Weight initialisation seed: the same seed gives the same model.
        words: Word list the tokenizer is trained on.
        vocab_size: Embedding rows (at least the tokenizer's size), e.g. 250002 for an XLM-R twin.
        activation_fn: Saved as the sentence-transformers activation, e.g. ``"torch.nn.modules.linear.Identity"``.
        tokenizer_vocab_size: Target size of the trained tokenizer's vocabulary.

    Returns:
        The folder.
    """
    import torch
    from transformers import AutoModelForSequenceClassification

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(arch, words, tokenizer_vocab_size)
    tokenizer.model_max_length = max_position
    config = _model_config(arch, tokenizer, layers, hidden, heads, intermediate or 4 * hidden, max_position,
                           num_labels, vocab_size)  # fmt: skip
    config.architectures = [
        "BertForSequenceClassification" if arch == "bert" else "XLMRobertaForSequenceClassification"
    ]
    if activation_fn is not None:
        config.sentence_transformers = {"activation_fn": activation_fn}
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


TWINS = {
    # name: (arch, layers, hidden, heads, intermediate, max_position, vocab_size)
    "bge-reranker-base": ("xlm-roberta", 12, 768, 12, 3072, 512, 250002),
    "bge-reranker-large": ("xlm-roberta", 24, 1024, 16, 4096, 512, 250002),
    "ms-marco-MiniLM-L-6-v2": ("bert", 6, 384, 12, 1536, 512, 30522),
    "ms-marco-TinyBERT-L-2-v2": ("bert", 2, 128, 2, 512, 512, 30522),
}


def build_twin(name: str, folder: str | Path, words: Iterable[str] = WORDS, seed: int = 0) -> Path:
    """Save an architecture twin of a known reranker (random weights, the real shape)."""
    if name not in TWINS:
        raise ValueError(f"no twin for {name!r}; known: {', '.join(TWINS)}")
    arch, layers, hidden, heads, intermediate, max_position, vocab = TWINS[name]
    return build_cross_encoder(
        folder, arch=arch, layers=layers, hidden=hidden, heads=heads, intermediate=intermediate,
        max_position=max_position, vocab_size=vocab, words=words, seed=seed, tokenizer_vocab_size=8000,
    )  # fmt: skip


def install_in_hub_cache(
    model_folder: str | Path, hub_id: str, cache_dir: str | Path, revision: str | None = None
) -> Path:
    """Lay ``model_folder`` out as huggingface_hub would have downloaded ``hub_id`` into ``cache_dir``.

    Files go to ``blobs/<sha256>``; ``snapshots/<revision>/<file>`` are relative symlinks to them
    (copies where symlinks are unavailable); ``refs/main`` holds the revision.

    Returns:
        The snapshot folder.
    """
    model_folder = Path(model_folder)
    repo = Path(cache_dir) / ("models--" + hub_id.replace("/", "--"))
    revision = revision or hashlib.sha1(hub_id.encode() + str(random.random()).encode()).hexdigest()
    snapshot = repo / "snapshots" / revision
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    for source in sorted(p for p in model_folder.rglob("*") if p.is_file()):
        digest = hashlib.sha256(source.read_bytes()).hexdigest()
        blob = repo / "blobs" / digest
        if not blob.exists():
            shutil.copyfile(source, blob)
        target = snapshot / source.relative_to(model_folder)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            target.symlink_to(os.path.relpath(blob, target.parent))
        except OSError:
            shutil.copyfile(blob, target)
    (repo / "refs" / "main").write_text(revision)
    return snapshot


def train_keyword_reranker(
    folder: str | Path,
    *,
    keyword: str = "paris",
    steps: int = 300,
    layers: int = 2,
    hidden: int = 64,
    max_words: int = 100,
    seed: int = 0,
) -> Path:
    """Train a tiny BERT cross-encoder to score documents that contain ``keyword`` high.

    A few hundred AdamW steps (about 15 s on 2 CPU cores) give logits around +/-5: a model with a
    real, known signal for tests about ranking, chunking and precision.

    Returns:
        The folder holding the trained model.
    """
    import torch

    folder = build_cross_encoder(folder, arch="bert", layers=layers, hidden=hidden, heads=2, seed=seed)
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    rng = random.Random(seed)
    torch.manual_seed(seed)
    vocabulary = [w for w in WORDS if w != keyword]
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(steps):
        queries, docs, labels = _keyword_batch(rng, vocabulary, keyword, max_words, size=32)
        features = tokenizer(queries, docs, truncation=True, max_length=256, padding=True, return_tensors="pt")
        logits = model(**features).logits.squeeze(-1)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.tensor(labels))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    model.save_pretrained(folder)
    return folder


def _keyword_batch(
    rng: random.Random, vocabulary: list[str], keyword: str, max_words: int, size: int
) -> tuple[list[str], list[str], list[float]]:
    queries, docs, labels = [], [], []
    for _ in range(size):
        words = [rng.choice(vocabulary) for _ in range(rng.randint(3, max_words))]
        positive = rng.random() < 0.5
        if positive:
            words.insert(rng.randint(0, len(words)), keyword)
        queries.append(" ".join(rng.choice(vocabulary) for _ in range(rng.randint(1, 6))))
        docs.append(" ".join(words))
        labels.append(1.0 if positive else 0.0)
    return queries, docs, labels
