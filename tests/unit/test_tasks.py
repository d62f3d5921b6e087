"""Held-out code-completion tasks, built with a tiny byte-level BPE trained here."""

from __future__ import annotations

import dataclasses

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from sglang_droidspeak.family.corpus import CorpusSplit, split_corpus
from sglang_droidspeak.tasks import TASKS, build_task, decode_answer, get_task, score_prediction
from sglang_droidspeak.tasks.code_tasks import is_target_line, token_byte_lengths

SMALL = dict(context_len=256, query_len=16)


@pytest.fixture(scope="module")
def corpus() -> CorpusSplit:
    return split_corpus()


@pytest.fixture(scope="module")
def tok(corpus: CorpusSplit) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([corpus.read(f) for f in corpus.base[:20]], trainer)
    return tokenizer


@pytest.fixture(scope="module")
def lcc_small(tok: Tokenizer, corpus: CorpusSplit) -> list:
    return build_task("lcc", tok, num_examples=12, seed=3, corpus=corpus, **SMALL)


def test_same_seed_same_examples(tok, corpus, lcc_small) -> None:
    again = build_task("lcc", tok, num_examples=12, seed=3, corpus=corpus, **SMALL)
    other = build_task("lcc", tok, num_examples=12, seed=4, corpus=corpus, **SMALL)
    assert again == lcc_small
    assert [e.example_id for e in other] != [e.example_id for e in lcc_small]


def test_first_examples_do_not_depend_on_count(tok, corpus, lcc_small) -> None:
    assert build_task("lcc", tok, num_examples=5, seed=3, corpus=corpus, **SMALL) == lcc_small[:5]


def test_lengths_and_one_example_per_file(lcc_small) -> None:
    assert len(lcc_small) == 12
    assert {(len(e.context_ids), len(e.query_ids)) for e in lcc_small} == {(256, 16)}
    assert len({e.source for e in lcc_small}) == 12


def test_prompt_is_the_file_text_right_before_the_target(tok, corpus, lcc_small) -> None:
    for example in lcc_small:
        prefix = corpus.read(example.source)[: example.prefix_chars]
        decoded = tok.decode(list(example.prompt_ids), skip_special_tokens=False)
        assert len(decoded) > 272 and prefix.endswith(decoded)
        # one tokenization of the whole prefix, split into context | query
        assert tok.encode(prefix).ids[-272:] == list(example.prompt_ids)


def test_prompt_ends_at_a_token_boundary_of_the_whole_file(tok, corpus, lcc_small) -> None:
    num_indented = 0
    for example in lcc_small:
        text = corpus.read(example.source)
        whole = tok.encode(text).ids
        num_prefix = len(tok.encode(text[: example.prefix_chars]).ids)
        assert whole[num_prefix - 272 : num_prefix] == list(example.prompt_ids)
        next_piece = tok.decode([whole[num_prefix]])  # " return" after "\n       ", or " "
        assert example.target.startswith(next_piece.strip())
        num_indented += text[example.prefix_chars - 1] == " "
    assert num_indented >= 3  # the cut sits inside the indentation, not after all of it


def test_target_is_the_true_next_line(corpus, lcc_small) -> None:
    for example in lcc_small:
        text = corpus.read(example.source)
        prefix, rest = text[: example.prefix_chars], text[example.prefix_chars :]
        assert prefix.rsplit("\n", 1)[1].strip() == ""  # newline + part of the indentation
        assert rest.split("\n", 1)[0].strip() == example.target
        assert text.split("\n")[example.target_line - 1].strip() == example.target
        assert is_target_line(example.target)


def test_nextlines_extends_lcc_at_the_same_sites(tok, corpus, lcc_small) -> None:
    nextlines = build_task("nextlines", tok, num_examples=12, seed=3, corpus=corpus, **SMALL)
    for lcc, multi in zip(lcc_small, nextlines, strict=True):
        assert (multi.source, multi.prompt_ids) == (lcc.source, lcc.prompt_ids)
        rest = corpus.read(multi.source)[multi.prefix_chars :]
        expected = [line.strip() for line in rest.split("\n") if line.strip()][:3]
        assert multi.target.split("\n") == expected and expected[0] == lcc.target


def test_64_default_examples_reuse_files_only_when_needed(tok, corpus) -> None:
    examples = build_task("lcc", tok, corpus=corpus)  # 64 x (768 + 32); lib_heldout: 33 files
    assert len(examples) == 64
    assert {(len(e.context_ids), len(e.query_ids)) for e in examples} == {(768, 32)}
    assert len({(e.source, e.target_line) for e in examples}) == 64
    assert len({e.source for e in examples}) < 64


def test_hf_fast_tokenizer_gives_the_same_examples(tok, corpus, lcc_small) -> None:
    from transformers import PreTrainedTokenizerFast

    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok)
    assert build_task("lcc", wrapped, num_examples=12, seed=3, corpus=corpus, **SMALL) == lcc_small


def test_errors(tok, corpus) -> None:
    with pytest.raises(ValueError, match=r"unknown task 'nope'.*'lcc', 'nextlines'"):
        build_task("nope", tok, corpus=corpus)
    with pytest.raises(ValueError, match="cannot supply 100000 lcc examples"):
        build_task("lcc", tok, num_examples=100_000, corpus=corpus, **SMALL)
    with pytest.raises(ValueError, match="unknown corpus split"):
        build_task("lcc", tok, split="nope", corpus=corpus)
    with pytest.raises(ValueError, match="unknown task"):
        score_prediction("nope", "x", None)


def test_word_level_tokenizer_is_rejected() -> None:
    word_level = Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    with pytest.raises(ValueError, match="byte-level"):
        token_byte_lengths(word_level)


def test_token_byte_lengths(tok) -> None:
    lengths = token_byte_lengths(tok)
    assert lengths[tok.token_to_id("<|endoftext|>")] == len("<|endoftext|>")
    ids = tok.encode("é = 'naïve'\n").ids
    assert sum(lengths[i] for i in ids) == len("é = 'naïve'\n".encode())


def test_decode_answer(tok) -> None:
    text = " return x\n    y = 2\n\n    z = 3\n    w = 4"
    ids = tok.encode(text).ids
    assert decode_answer(tok, ids, "lcc") == " return x"
    assert decode_answer(tok, ids, "nextlines") == " return x\n    y = 2\n\n    z = 3"
    eos = tok.token_to_id("<|endoftext|>")
    assert decode_answer(tok, tok.encode(" a = 1").ids + [eos] + ids, "lcc") == " a = 1"
    assert decode_answer(tok, [], get_task("nextlines")) == ""


def test_score_prediction(lcc_small) -> None:
    example = lcc_small[0]
    perfect = score_prediction("lcc", "   " + example.target + "  \n", example)
    assert perfect == {"edit_sim": 1.0}
    assert score_prediction("lcc", "", example) == {"edit_sim": 0.0}
    with pytest.raises(ValueError, match="belongs to task 'lcc'"):
        score_prediction("nextlines", example.target, example)
    multi = dataclasses.replace(example, task="nextlines", target="v = f(x)\nreturn v\nw = 2")
    scores = score_prediction("nextlines", "  v = f(x)\n\n  return v\n  w = 3", multi)
    assert set(scores) == set(TASKS["nextlines"].metrics)
    assert scores["rouge_l"] == pytest.approx(10 / 11, abs=1e-12)  # v = f ( x ) return v w = 2|3
    assert scores["token_f1"] == pytest.approx(5 / 6, abs=1e-12)  # v fx return v w 2|3


def test_continuation_covers_the_target_lines(tok, corpus, lcc_small) -> None:
    nextlines = build_task("nextlines", tok, num_examples=4, seed=3, corpus=corpus, **SMALL)
    for example in lcc_small + nextlines:
        text = corpus.read(example.source)
        covered = tok.decode(list(example.continuation_ids))
        assert text[example.prefix_chars:].startswith(covered)
        lines = [line.strip() for line in covered.split("\n") if line.strip()]
        assert "\n".join(lines[: len(example.target.split("\n"))]) == example.target
        assert "\n" in tok.decode(list(example.continuation_ids[-1:]))  # it runs to the line's end
        assert tok.decode(list(example.continuation_ids[:-1])).count("\n") < covered.count("\n")  # and no further
