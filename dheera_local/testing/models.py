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
        ordered = _canonical_order(list(tok.get_vocab()), specials, set(corpus))
        return BertTokenizerFast(vocab={token: i for i, token in enumerate(ordered)}, do_lower_case=True)
    if arch == "xlm-roberta":
        from transformers import XLMRobertaTokenizerFast

        tok = Tokenizer(models.Unigram())
        tok.normalizer = normalizers.Lowercase()
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=["<unk>"], unk_token="<unk>")
        tok.train_from_iterator(corpus, trainer)
        trained = (
            [(p, s) for p, s in tok.get_model_vocab_scores() if p != "<unk>"]
            if hasattr(tok, "get_model_vocab_scores")
            else _unigram_pieces(tok)
        )
        # Scores differ in the last digits from run to run; rounded, the same words tokenize the same.
        scores = {piece: round(score, 3) for piece, score in trained}
        order = _canonical_order(list(scores), [], {"\u2581" + word.lower() for word in corpus})
        pieces = [(piece, scores[piece]) for piece in order]
        vocab = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), *pieces, ("<mask>", 0.0)]
        return XLMRobertaTokenizerFast(vocab=vocab)
    raise ValueError(f"arch must be 'bert' or 'xlm-roberta', got {arch!r}")


def _canonical_order(tokens: list[str], specials: list[str], words: set[str]) -> list[str]:
    """Specials, then whole words, then other pieces, each sorted.

    The trainers number tokens in hash-map order, and which intermediate pieces they keep varies
    between processes; numbering the words the same way every time is what lets one seed give
    one model.
    """
    rest = [token for token in tokens if token not in specials]
    whole = sorted(token for token in rest if token in words)
    return [*specials, *whole, *sorted(token for token in rest if token not in words)]


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
    # Rounded up so that the embedding table, initialised first, draws the same number of random
    # values whatever the trainer's intermediate pieces: the rest of the model then gets the same weights.
    vocab = max(vocab_size or 0, -(-len(tokenizer) // 64) * 64)
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


KEYWORD_MARGIN = 2.5  # logits: held-out positives above +2.5, negatives below -2.5 (sigmoid 0.92 / 0.08)
KEYWORD_ROUNDS = 3


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

    A few hundred AdamW steps (about 15 s on 2 CPU cores) give logits around +/-6: a model with a
    real, known signal for tests about ranking, chunking and precision. Each round warms up, then
    decays the learning rate, with clipped gradients (a constant rate sometimes learned the task,
    then diverged to a constant output). After each round the model must separate 512 held-out
    pairs by :data:`KEYWORD_MARGIN`; training goes on for up to :data:`KEYWORD_ROUNDS` rounds.

    Returns:
        The folder holding the trained model.

    Raises:
        RuntimeError: The model still did not separate the held-out pairs.
    """
    import torch

    folder = build_cross_encoder(folder, arch="bert", layers=layers, hidden=hidden, heads=2, seed=seed)
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    rng = random.Random(seed)
    torch.manual_seed(seed)
    vocabulary = [w for w in WORDS if w != keyword]
    held_out = _keyword_batch(random.Random(seed + 1_000_003), vocabulary, keyword, max_words, size=512)
    for _ in range(KEYWORD_ROUNDS):
        _keyword_round(model, tokenizer, lambda: _keyword_batch(rng, vocabulary, keyword, max_words, size=32), steps)
        lowest_positive, highest_negative = _keyword_separation(model, tokenizer, held_out)
        if lowest_positive > KEYWORD_MARGIN and highest_negative < -KEYWORD_MARGIN:
            model.save_pretrained(folder)
            return folder
    raise RuntimeError(
        f"the keyword model did not learn '{keyword}' in {KEYWORD_ROUNDS} x {steps} steps: held-out positives "
        f"reach down to {lowest_positive:.2f} and negatives up to {highest_negative:.2f} (logits)"
    )


def _keyword_round(model, tokenizer, next_batch, steps: int) -> None:  # noqa: ANN001
    import torch

    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    warmup = max(1, steps // 15)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup) * max(0.0, 1.0 - step / steps)
    )
    model.train()
    for _ in range(steps):
        queries, docs, labels = next_batch()
        features = tokenizer(queries, docs, truncation=True, max_length=256, padding=True, return_tensors="pt")
        logits = model(**features).logits.squeeze(-1)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.tensor(labels))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
    model.eval()


def _keyword_separation(model, tokenizer, batch: tuple[list[str], list[str], list[float]]) -> tuple[float, float]:  # noqa: ANN001
    """(lowest logit of a positive, highest logit of a negative) over ``batch``."""
    import torch

    queries, docs, labels = batch
    with torch.inference_mode():
        features = tokenizer(queries, docs, truncation=True, max_length=256, padding=True, return_tensors="pt")
        logits = model(**features).logits.squeeze(-1).tolist()
    positives = [logit for logit, label in zip(logits, labels, strict=True) if label == 1.0]
    negatives = [logit for logit, label in zip(logits, labels, strict=True) if label == 0.0]
    return min(positives), max(negatives)


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


# Decoder-only (LLM) rerankers: tiny random Gemma / Qwen3 causal LMs whose tokenizers hold every token
# their prompt templates use, so the template code paths run exactly as on the real models.

LLM_FAMILIES = ("gemma", "qwen3")
# Texts the templates put around each pair: in the tokenizer's training data, so they tokenize into few,
# stable pieces, and "yes", "no", "Yes" become single tokens (the templates read their logits).
_TEMPLATE_TEXTS = (
    "Judge whether the Document meets the requirements based on the Query and the Instruct provided. Note that "
    'the answer can only be "yes" or "no".',
    "<Instruct>: Given a web search query, retrieve relevant passages that answer the query\n<Query>: ",
    "\n<Document>: ",
    "system\n",
    "user\n",
    "assistant\n",
    "A: ",
    "B: ",
    "Given a query A and a passage B, determine whether the passage contains an answer to the query by "
    "providing a prediction of either 'Yes' or 'No'.",
)
LLM_TWINS = {
    # name: (family, layers, hidden, heads, kv_heads, head_dim, intermediate, vocab_size)
    "Qwen3-Reranker-0.6B": ("qwen3", 28, 1024, 16, 8, 128, 3072, 151669),
    "bge-reranker-v2-gemma": ("gemma", 18, 2048, 8, 1, 256, 16384, 256000),
}


def train_llm_tokenizer(family: str, words: Iterable[str] = WORDS, vocab_size: int = 1500):  # noqa: ANN201
    """A byte-level BPE tokenizer for a ``family`` ("gemma" or "qwen3") twin: the family's special tokens
    (``<bos>``/``<eos>``/``<pad>``; ``<|im_start|>``/``<|im_end|>``/``<think>``/``</think>``) and single
    tokens for "yes", "no" and "Yes". Adds no special tokens by itself, as neither real tokenizer does for
    the calls the reference code makes."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if family not in LLM_FAMILIES:
        raise ValueError(f"family must be one of {', '.join(LLM_FAMILIES)}, got {family!r}")
    specials = ["<pad>", "<eos>", "<bos>"] if family == "gemma" else ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    rng = random.Random(0)
    vocabulary = list(words)
    corpus = [" ".join(rng.choice(vocabulary) for _ in range(12)) for _ in range(400)]
    corpus += ["yes", "no", "Yes", "No"] * 200 + list(_TEMPLATE_TEXTS) * 20
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=alphabet, show_progress=False
    )
    tok.train_from_iterator(corpus, trainer)
    if family == "gemma":
        return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")
    tok.add_tokens([AddedToken("<think>", normalized=False), AddedToken("</think>", normalized=False)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")


def build_llm_reranker(
    folder: str | Path,
    *,
    family: str = "qwen3",
    layers: int = 2,
    hidden: int = 32,
    heads: int = 4,
    kv_heads: int = 2,
    head_dim: int = 8,
    intermediate: int = 64,
    vocab_size: int | None = None,
    max_position: int = 4096,
    init_std: float = 0.2,
    seed: int = 0,
    words: Iterable[str] = WORDS,
    tokenizer_vocab_size: int = 1500,
) -> Path:
    """Save a random-weight decoder-only reranker: ``GemmaForCausalLM`` (as BAAI/bge-reranker-v2-gemma) or
    ``Qwen3ForCausalLM`` (as Qwen/Qwen3-Reranker-*), with a tokenizer from :func:`train_llm_tokenizer`.

    ``init_std`` is larger than the models' own (0.02) so that a tiny model's "yes" logits differ from
    pair to pair by whole units: tests comparing scores to 1e-4 then compare something.
    """
    import torch

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = train_llm_tokenizer(family, words, tokenizer_vocab_size)
    tokenizer.model_max_length = max_position
    vocab = max(vocab_size or 0, -(-len(tokenizer) // 64) * 64)
    shape = dict(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim,
        max_position_embeddings=max_position, initializer_range=init_std, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    if family == "gemma":
        from transformers import GemmaConfig, GemmaForCausalLM

        config, model_class = GemmaConfig(bos_token_id=tokenizer.bos_token_id, **shape), GemmaForCausalLM
    else:
        from transformers import Qwen3Config, Qwen3ForCausalLM

        config, model_class = Qwen3Config(**shape), Qwen3ForCausalLM
    torch.manual_seed(seed)
    model = model_class(config)
    with torch.no_grad():  # RMSNorm weights start at 1 (Gemma: 0): spread them too, so every norm matters
        for name, parameter in model.named_parameters():
            if name.endswith("norm.weight"):
                parameter.add_(torch.randn_like(parameter) * init_std)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_llm_twin(name: str, folder: str | Path, seed: int = 0, words: Iterable[str] = WORDS) -> Path:
    """Save an architecture twin of a decoder-only reranker (random weights, the real shape; a tokenizer
    trained on ``words``, 8,000 tokens: pass a benchmark's own text for realistic token counts)."""
    if name not in LLM_TWINS:
        raise ValueError(f"no twin for {name!r}; known: {', '.join(LLM_TWINS)}")
    family, layers, hidden, heads, kv_heads, head_dim, intermediate, vocab = LLM_TWINS[name]
    return build_llm_reranker(
        folder, family=family, layers=layers, hidden=hidden, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
        intermediate=intermediate, vocab_size=vocab, max_position=32768, init_std=0.02, seed=seed, words=words,
        tokenizer_vocab_size=8000,
    )  # fmt: skip


def convert_to_seq_cls(causal_folder: str | Path, folder: str | Path) -> Path:
    """Save a ``Qwen3ForCausalLM`` reranker as ``Qwen3ForSequenceClassification`` with one label whose
    weight row is the head's "yes" row minus its "no" row: the ``*-seq-cls`` conversions' recipe, so its
    logit is logit(yes) - logit(no) of the causal model."""
    import torch
    from transformers import AutoTokenizer, Qwen3ForCausalLM, Qwen3ForSequenceClassification

    folder = Path(folder)
    tokenizer = AutoTokenizer.from_pretrained(causal_folder)
    causal = Qwen3ForCausalLM.from_pretrained(causal_folder)
    config = causal.config
    config.architectures = ["Qwen3ForSequenceClassification"]
    config.num_labels = 1
    classifier = Qwen3ForSequenceClassification(config)
    classifier.model.load_state_dict(causal.model.state_dict())
    head = causal.get_output_embeddings().weight
    yes, no = tokenizer.convert_tokens_to_ids("yes"), tokenizer.convert_tokens_to_ids("no")
    with torch.no_grad():
        classifier.score.weight.copy_((head[yes] - head[no]).unsqueeze(0))
    classifier.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
