"""Task formats, parsers and metrics on hand-computed examples; the end-to-end path on a tiny random model."""

import json

import pytest
import torch

from biogpt import Tokenizer
from biogpt.tasks import TaskError, get_task, inference_prefix, predict, read_predictions, training_pair
from biogpt.tasks.common import Example
from biogpt.tasks.ddi import hard_match, normalize_name, parse_triples

from .conftest import TASKS, VOCABS

# --- data formats --------------------------------------------------------------------------------------


def test_split_sizes_and_formats():
    sizes = {"pubmedqa": 500, "bc5cdr": 500, "ddi": 191, "kd-dti": 1159, "hoc": 4947}
    for name, n in sizes.items():
        assert len(get_task(name).examples(TASKS, "test")) == n
    assert len(get_task("ddi").examples(TASKS, "train")) == 469  # documents without relations dropped
    ex = get_task("bc5cdr").examples(TASKS, "test")[0]
    assert ex.source.startswith("famotidine-associated delirium. a series of six cases. famotidine is")
    assert ex.target == "the relation between famotidine and delirium exists."
    hoc = get_task("hoc").examples(TASKS, "test")[0]
    assert hoc.target == "the type of this document is empty." and hoc.source[0].isupper()  # not lowercased
    pqa = get_task("pubmedqa").examples(TASKS, "test")[0]
    assert pqa.source.startswith("question: is anorectal") and pqa.target.endswith("context is yes.")
    rr = get_task("pubmedqa", setting="reasoning-required")
    ex = rr.examples(TASKS, "test")
    assert len(ex) == 500 and ex[0].source.endswith(" ") and "answer:" not in ex[0].source
    assert len(rr.examples(TASKS, "train")) == 450 and len(rr.examples(TASKS, "valid")) == 50


def test_ddi_triple_order_quirk():
    from biogpt.tasks.ddi import triples_target

    triples = [
        {"drug": "b", "target": "x", "interaction": "effect"},
        {"drug": "Aspirin", "target": "y", "interaction": "advise"},  # capitalised: not found (-1), sorts first
        {"drug": "a", "target": "z", "interaction": "int"},
    ]
    content = "first a then b and aspirin"
    assert triples_target(triples, content) == (
        "the interaction between aspirin and y is advise; the interaction between a and z is int; "
        "the interaction between b and x is effect."
    )


def test_truncation_marker_with_any_vocabulary(tmp_path):
    """A vocabulary learned by `biogpt bpe learn` may lack the word `...`: truncation then uses <unk>, as
    fairseq's Dictionary.index("...") does, instead of failing with KeyError."""
    from biogpt.tasks.common import encode_source, encode_target
    from biogpt.training.bpe_learn import learn

    learn(["word word word a a b"] * 3, tmp_path, num_merges=5, min_frequency=1)
    tok = Tokenizer.from_pretrained(tmp_path, num_prompt_tokens=9)
    assert "...</w>" not in tok.piece_to_id
    ids = encode_source(tok, " ".join(["word"] * 20), 10)
    assert len(ids) == 10 and ids[-1] == 3  # <unk>
    assert encode_target(tok, " ".join(["word"] * 20), 6)[-2:] == [3, 2]


def test_layout_and_truncation():
    tok = Tokenizer.from_pretrained(VOCABS["base"], num_prompt_tokens=9)
    task = get_task("ddi")
    dots = tok.piece_to_id["...</w>"]
    long = Example("1", " ".join(["word"] * 700), "the interaction between a and b is " + "x " * 400)
    inp, tgt = training_pair(task, tok, long)
    src_len = 640  # max_src - 1 original tokens + "..."
    assert tgt[:src_len] == [tok.piece_to_id["word</w>"]] * 639 + [dots]
    assert tgt[src_len : src_len + 9] == tok.prompt_ids
    assert len(tgt) == 640 + 9 + 375 and tgt[-2:] == [dots, 2]  # max_tgt = 1024 - 640 - 9
    assert inp == [2] + tgt[:-1]
    short = Example("2", "aspirin .", "the interaction between a and b is effect.")
    prefix = inference_prefix(task, tok, short.source)
    assert prefix == [2] + tok.encode("aspirin .", add_eos_prefix=False) + tok.prompt_ids


# --- parsers and metrics -------------------------------------------------------------------------------


def test_pubmedqa_parse_and_accuracy():
    t = get_task("pubmedqa")
    assert (
        t.parse("question: x? context: y. learned1 learned2 the answer to the question given the context is no.")
        == "no"
    )
    assert t.parse("the answer to the question given the context is maybe") == "maybe"
    assert t.parse("") == "failed"
    assert t.parse("something else entirely") == "failed"
    ex = [Example(str(i), "", "", g) for i, g in enumerate(["yes", "no", "maybe", "yes"])]
    preds = ["yes", "failed", "maybe", "no"]
    assert t.score(preds, ex) == {"accuracy": 0.5}


def test_hoc_parse_and_micro_f1():
    t = get_task("hoc")
    out = "x learned1 the type of this document is resisting cell death|genomic instability and mutation."
    assert t.parse(out) == {"resisting cell death", "genomic instability and mutation"}
    assert t.parse("garbage") == {"failed"}
    ex = [
        Example("0", "", "", frozenset({"empty"})),
        Example("1", "", "", frozenset({"resisting cell death", "inducing angiogenesis"})),
        Example("2", "", "", frozenset({"cellular energetics"})),
    ]
    preds = [
        frozenset({"empty"}),  # tp 1
        frozenset({"resisting cell death", "not a hallmark"}),  # tp 1, fn 1; unknown label ignored
        frozenset({"failed"}),  # fn 1
    ]
    m = t.score(preds, ex)
    # tp 2, fp 0, fn 2 -> P 1, R 0.5, F1 2/3
    assert m["precision"] == 1.0 and m["recall"] == 0.5 and abs(m["micro_f1"] - 2 / 3) < 1e-12


def test_relation_parsers():
    out = (
        "source text learned8 learned9 the interaction between aspirin and warfarin is effect; "
        "the interaction between aspirin and warfarin is effect; "  # duplicate
        "the interaction between salt and pepper and water is mechanism; garbage."
    )
    assert parse_triples(out) == {("aspirin", "effect", "warfarin"), ("salt and pepper", "mechanism", "water")}
    assert parse_triples("") == frozenset()
    assert parse_triples("we can conclude that the interaction between a and b is int.") == {("a", "int", "b")}
    bc = get_task("bc5cdr")
    bc.examples(TASKS, "test")  # loads test.entities.json
    pred = bc.parse(
        "learned9 the relation between famotidine and delirium exists; the relation between x and ulcers exists."
    )
    assert pred == {("D015738", "D003693"), ("-1", "D014456")}
    assert bc.parse("nothing here") == frozenset()


def test_normalisation_and_hard_match():
    gold = [
        frozenset({("Psoralen", "inhibitor", "Monoamine oxidase type A (MAO-A)"), ("d", "agonist", "t")}),
        frozenset({("x", "effect", "y")}),
    ]
    pred = [
        frozenset({("psoralen", "inhibitor", "MAO-A"), ("z", "agonist", "t")}),  # abbreviation form matches
        frozenset(),  # failed: empty prediction
    ]
    m = hard_match(pred, gold)
    # doc 1: abbr way -> 1 of 2 right: P .5 R .5 F .5; doc 2: P 0 R 0 F 0 -> means .25
    assert m["doc_precision"] == 0.25 and m["doc_recall"] == 0.25 and m["doc_f1"] == 0.25
    # pooled (abbr way): pred {psoralen-i-maoa, z-a-t}, gold {psoralen-i-maoa, d-a-t, x-e-y}: P 1/2, R 1/3
    assert m["pooled_precision"] == 0.5 and abs(m["pooled_recall"] - 1 / 3) < 1e-12
    assert abs(m["pooled_f1"] - 0.4) < 1e-12


def test_precision_and_recall_are_maximised_separately():
    """hard_match_evaluation.py takes the best P and the best R over the two name normalisations separately,
    then F1 of that pair: here P is best under "rm" and R under "abbr", so F1 is 1, not the 2/3 that either
    normalisation's own F1 gives."""
    gold = [frozenset({("x (k)", "r", "t"), ("y (k)", "r", "t")})]  # abbr: {k-r-t}; rm: {x-r-t, y-r-t}
    pred = [frozenset({("x (k)", "r", "t"), ("x (m)", "r", "t")})]  # abbr: {k-r-t, m-r-t}; rm: {x-r-t}
    # abbr: P 1/2, R 1/1 (F1 2/3); rm: P 1/1, R 1/2 (F1 2/3); best P 1, best R 1 -> F1 1
    m = hard_match(pred, gold)
    assert (m["doc_precision"], m["doc_recall"], m["doc_f1"]) == (1.0, 1.0, 1.0)
    assert (m["pooled_precision"], m["pooled_recall"], m["pooled_f1"]) == (1.0, 1.0, 1.0)
    # two documents: the per-document F1s are averaged; pooling dedups the identical triple across documents
    m = hard_match(pred + [frozenset({("a", "r", "b")})], gold + [frozenset({("a", "r", "b"), ("c", "r", "d")})])
    assert m["doc_f1"] == (1.0 + 2 * 1.0 * 0.5 / 1.5) / 2
    # pooled: abbr pred {k, m, a} gold {k, a, c}: P 2/3 R 2/3; rm pred {x, a} gold {x, y, a, c}: P 1 R 1/2
    # -> P 1, R 2/3, F1 0.8 (the larger of the two normalisations' own F1s would say 2/3)
    assert m["pooled_precision"] == 1.0 and m["pooled_recall"] == 2 / 3 and abs(m["pooled_f1"] - 0.8) < 1e-12


def test_name_normalisation_as_the_original():
    # a trailing digit becomes a Roman numeral only in names of 3+ characters after a non-digit
    assert normalize_name("il-2") == "ilII" and normalize_name("cyp2c9") == "cyp2cIX"
    assert normalize_name("b2") == "b2" and normalize_name("12") == "12" and normalize_name("h0") == "h0"
    assert normalize_name("abc0") == "abc0" and normalize_name("p450-type") == "p450"


def test_bc5cdr_corpus_micro():
    t = get_task("bc5cdr")
    ex = [
        Example("1", "", "", frozenset({("c1", "d1"), ("c2", "d2")})),
        Example("2", "", "", frozenset({("c3", "d3")})),
    ]
    preds = [frozenset({("c1", "d1"), ("-1", "d2")}), frozenset({("c3", "d3"), ("c3", "d9")})]
    m = t.score(preds, ex)  # tp 2, pred 4, gold 3
    assert (m["tp"], m["fp"], m["fn"]) == (2, 2, 1)
    assert m["precision"] == 0.5 and abs(m["recall"] - 2 / 3) < 1e-12


# --- end to end and errors ------------------------------------------------------------------------------


def tiny_task_model(k: int):
    from biogpt import BioGPT, BioGPTConfig

    cfg = BioGPTConfig(vocab_size=42384 + k, n_layer=2, d_model=32, n_head=4, d_ffn=64, num_prompt_tokens=k)
    torch.manual_seed(0)
    m = BioGPT(cfg)
    m.init_weights(seed=0)
    return m.eval()


def test_end_to_end_on_a_tiny_model(tmp_path, capsys):
    from biogpt.checkpoints import save_hf
    from biogpt.cli import main

    task = get_task("hoc")
    examples = task.examples(TASKS, "test")[:3]
    tok = Tokenizer.from_pretrained(VOCABS["base"], num_prompt_tokens=1)
    model = tiny_task_model(1)
    outputs = predict(task, model, tok, examples, batch_size=2)
    assert len(outputs) == 3
    metrics = task.score([task.parse(o) for o in outputs], examples)
    # the CLI runs the same path from a saved checkpoint and writes the JSON report
    save_hf(model, tok, tmp_path / "m")
    report = tmp_path / "r.json"
    assert main(["eval", "hoc", "--model", str(tmp_path / "m"), "--data", str(TASKS), "--limit", "3",
                 "--output", str(report), "--save-outputs", str(tmp_path / "out.txt")]) == 0  # fmt: skip
    r = json.loads(report.read_text())
    assert r["task"] == "hoc" and r["n"] == 3 and {k: r["metrics"][k] for k in metrics} == metrics
    parsed = sum(task.parse(o) != {"failed"} for o in outputs)  # outputs naming at least one label
    assert r["metrics"]["parse_rate"] == parsed / 3
    assert (tmp_path / "out.txt").read_text().split("\n")[:3] == outputs
    # a model with the wrong number of prompt tokens for the task
    with pytest.raises(TaskError, match="uses 9 learned prompt tokens but the model has 1"):
        predict(get_task("ddi"), model, tok, get_task("ddi").examples(TASKS, "test")[:1])


def test_task_errors(tmp_path, capsys):
    from biogpt.cli import main

    with pytest.raises(TaskError, match="unknown task"):
        get_task("squad")
    with pytest.raises(TaskError, match="split file not found"):
        get_task("kd-dti").examples(TASKS, "train")
    p = tmp_path / "pred.txt"
    p.write_text("a\nb\n")
    with pytest.raises(TaskError, match="has 2 lines but the split has 500"):
        read_predictions(p, 500)
    assert main(["eval", "pubmedqa", "--predictions", str(p), "--data", str(TASKS)]) == 2
    assert "has 2 lines" in capsys.readouterr().err
    # scoring gold outputs (as the original pipeline printed them) gives perfect scores
    ex = get_task("pubmedqa").examples(TASKS, "test")
    p.write_text("".join(f"{e.source} learned1 learned2 {e.target}\n" for e in ex))
    assert main(["eval", "pubmedqa", "--predictions", str(p), "--data", str(TASKS), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["metrics"] == {"accuracy": 1.0, "parse_rate": 1.0}
