"""Prompt sets: per-group means and t-intervals equal an independent aggregation of single runs."""

from __future__ import annotations

import math
import statistics
import threading
import types
from pathlib import Path

import numpy as np
import pytest

from lens import Capabilities, LensError, charts, load_model, prompt_set, run_lens, tokenize_target
from lens.exports import safe_csv
from lens.intervals import t_quantile
from lens.prompt_set import batches, read_prompt_rows, read_row

DATA = Path(__file__).resolve().parent.parent / "data"
# t(0.975, df) for df = 1..30, as printed in statistics tables (three decimals).
T_TABLE = [
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
]  # fmt: skip
MEASURE_SLOTS = {"target_probability": "target_probs", "target_logit": "target_logits", "target_rank": "target_ranks"}


@pytest.fixture(scope="module")
def demo():
    return load_model("demo", device="cpu")


def _t_reference(df: int) -> float:
    try:
        from scipy import stats
    except ImportError:
        return T_TABLE[df - 1]
    return float(stats.t.ppf(0.975, df))


def test_t_quantile_matches_the_printed_table():
    for df, printed in enumerate(T_TABLE, 1):
        assert abs(t_quantile(0.975, df) - printed) <= 5e-4, df
    # Far from the table: the normal limit, and the lower tail by symmetry.
    assert abs(t_quantile(0.975, 1e9) - 1.959964) < 1e-5
    assert t_quantile(0.025, 7) == pytest.approx(-t_quantile(0.975, 7), abs=1e-12)


def _example_rows(name: str) -> list:
    path = DATA / name
    return read_prompt_rows(path.read_text(), path.suffix.lstrip("."))


def _single_runs(model, rows):
    """Per row: run_lens's numbers at the last position, for target and contrast, row by row."""
    out = []
    for row in rows:
        result = run_lens(model, row["prompt"], targets=[row["target"], row["contrast"]], top_k=1)
        last = {name: getattr(result, slot)[:, :, -1] for name, slot in MEASURE_SLOTS.items()}
        last["logit_difference"] = last["target_logit"][0] - last["target_logit"][1]
        for measure in MEASURE_SLOTS:
            last[measure] = last[measure][0]
        out.append((row.get("group"), last))
    return out


@pytest.mark.parametrize(
    ("model_fixture", "data_file"), [("demo", "prompt_set_demo.csv"), ("stories", "prompt_set_stories260K.jsonl")]
)
def test_means_and_intervals_equal_an_independent_aggregation_of_single_runs(request, model_fixture, data_file):
    model = request.getfixturevalue(model_fixture)
    rows = _example_rows(data_file)
    result = prompt_set(model, rows)
    assert result.errors == [] and len(result.groups) >= 2
    summary = result.to_frame()
    single = _single_runs(model, rows)
    checked = 0
    for group in result.groups:
        runs = [numbers for g, numbers in single if g == group]
        for measure in ("target_probability", "target_logit", "target_rank", "logit_difference"):
            for index, layer in enumerate(result.layers):
                values = [float(numbers[measure][index]) for numbers in runs]
                line = summary[(summary.group == group) & (summary.measure == measure) & (summary.layer == layer)]
                assert len(line) == 1
                got = line.iloc[0]
                mean, half = statistics.mean(values), _t_reference(len(values) - 1) * statistics.stdev(values)
                half /= math.sqrt(len(values))
                scale = max(abs(mean), 1e-3)
                assert got.n == len(values)
                assert got["mean"] == pytest.approx(mean, rel=1e-4, abs=1e-6 * scale)
                assert got.ci_low == pytest.approx(mean - half, abs=3e-4 * half + 1e-5 * scale)
                assert got.ci_high == pytest.approx(mean + half, abs=3e-4 * half + 1e-5 * scale)
                if measure == "target_rank":  # ranks are exact integers: so are their order statistics
                    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
                    assert (got.q1, got["median"], got.q3) == (q1, statistics.median(values), q3)
                checked += 1
    assert checked == len(result.groups) * 4 * len(result.layers)


def test_a_concepts_probability_is_the_sum_of_its_tokens_probabilities(demo):
    prompt = "Thus saith the"
    result = prompt_set(demo, [{"prompt": prompt, "target": " LORD", "concepts": {"divine": ["lord"]}}])
    # The variants written out by hand: first token of each spacing and capitalisation.
    ids = list(dict.fromkeys(tokenize_target(demo, w)[0] for w in (" lord", "lord", " Lord", "Lord")))
    assert result.concept_tokens["divine"] == demo.token_name.many(ids)
    single = run_lens(demo, prompt, targets=ids, top_k=1)
    expected = single.target_probs[:, :, -1].astype(np.float64).sum(0)
    got = result.per_prompt["concept: divine"].to_numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-9)


def test_batched_equals_one_prompt_at_a_time(stories):
    rows = _example_rows("prompt_set_stories260K.jsonl")
    readable = [read_row(stories, row, n)[0] for n, row in enumerate(rows, 1)]
    assert len(batches(readable)) < len(readable)  # several prompts share a forward pass
    assert len({len(p.token_ids) for p in readable}) > 2  # with padding to different lengths
    together = prompt_set(stories, rows).per_prompt
    alone = [prompt_set(stories, [row]).per_prompt for row in rows]
    for number, frame in enumerate(alone, 1):
        batched = together[together.row == number].reset_index(drop=True)
        for column in frame.columns.drop(["row"]):
            if frame[column].dtype.kind == "f":
                atol = 1e-5 if "logit" in column else 1e-7  # logits are O(1-10): fp32 noise of ~1e-6
                np.testing.assert_allclose(batched[column], frame[column], rtol=1e-4, atol=atol, err_msg=column)
            else:
                assert batched[column].tolist() == frame[column].tolist(), column


def test_bad_rows_are_reported_by_number_and_the_rest_computed(demo):
    good = [
        {"prompt": "Thus saith the", "target": " LORD", "group": "a"},
        {"prompt": "the children of", "target": " Israel", "group": "a", "contrast": " the"},
    ]
    rows = [
        good[0],
        {"prompt": "", "target": " LORD"},
        {"prompt": "O house of"},
        "just a string",
        {"prompt": "O house of", "target": " Israel", "concepts": {"people": [" "]}},
        {"prompt": "O house of", "target": 3.5},
        good[1],
    ]
    result = prompt_set(demo, rows)
    assert [e.split(":")[0] for e in result.errors] == ["Row 2", "Row 3", "Row 4", "Row 5", "Row 6"]
    assert "empty" in result.errors[0] and "target" in result.errors[1] and "concept 'people'" in result.errors[3]
    assert all("\n" not in e for e in result.errors)
    assert result.prompts.row.tolist() == [1, 7]
    alone = prompt_set(demo, good)
    np.testing.assert_allclose(
        result.per_prompt.target_probability.to_numpy(), alone.per_prompt.target_probability.to_numpy(), rtol=1e-5
    )


def test_unparseable_jsonl_lines_keep_their_row_numbers(demo):
    good = ['{"prompt": "Thus saith the", "target": " LORD"}', '{"prompt": "O house of", "target": " Israel"}']
    text = "\n".join([good[0], "not json", "[1, 2]", good[1]])
    result = prompt_set(demo, read_prompt_rows(text, "jsonl"))
    assert result.errors == ["Row 2: is not valid JSON (Expecting value).", "Row 3: is not an object."]
    assert result.prompts.row.tolist() == [1, 4]


def test_csv_concept_columns_become_concepts(demo):
    rows = _example_rows("prompt_set_demo.csv")
    assert rows[0]["concepts"] == {"divine": ["lord", "god"], "people": ["people", "king"]}
    assert "concept:divine" not in rows[0]


def test_limits_and_types_are_one_line_errors(demo):
    rows = [{"prompt": "Thus saith the", "target": " LORD"}] * 3
    with pytest.raises(LensError, match="at most 2 .*LENS_MAX_PROMPTS"):
        prompt_set(demo, rows, max_prompts=2)
    with pytest.raises(LensError, match="list of mappings"):
        prompt_set(demo, "Thus saith the")
    with pytest.raises(LensError, match="top_k"):
        prompt_set(demo, rows, top_k=0)
    with pytest.raises(LensError, match="No row could be read"):
        prompt_set(demo, [{"prompt": "", "target": "x"}])
    remote = types.SimpleNamespace(
        name="remote-model",
        capabilities=Capabilities(local_weights=False, remote=True),
        capture=lambda tokens, hooks: {},
        readout=object(),
        tokenizer=demo.tokenizer,
        lock=threading.Lock(),
        n_layers=demo.n_layers,
        token_name=demo.token_name,
    )
    with pytest.raises(LensError, match="on NDIF"):
        prompt_set(remote, rows)


def test_exports_escape_formula_cells(demo):
    rows = [{"prompt": "=HYPERLINK(1)", "target": " LORD", "group": "+grp"}]
    result = prompt_set(demo, rows)
    text = safe_csv(result.per_prompt) + safe_csv(result.to_frame())
    assert "'=HYPERLINK(1)" in text and "'+grp" in text
    assert "\n=" not in text and ",=" not in text and ",+" not in text


def test_chart_draws_a_line_and_band_per_group_and_measure_and_aligns_depths(demo, stories):
    demo_set = prompt_set(demo, _example_rows("prompt_set_demo.csv")).to_frame()
    measures = ["target_probability", "concept: divine"]
    frame = charts.prompt_set_frame({"demo": demo_set}, measures)
    assert sorted(frame.series.unique()) == sorted(
        f"{g} · {charts.measure_name(m)}" for g in ("scripture", "plays and novels") for m in measures
    )
    assert (frame.band_low >= 0).all() and (frame.band_high <= 1).all() and (frame.ci_low < 0).any()
    spec = charts.prompt_set_chart({"demo": demo_set}, measures).to_dict()
    assert [layer["mark"]["type"] for layer in spec["layer"]] == ["area", "line", "point"]
    assert spec["layer"][1]["encoding"]["x"]["field"] == "layer"
    stories_set = prompt_set(stories, _example_rows("prompt_set_stories260K.jsonl")).to_frame()
    both = charts.prompt_set_chart({"demo": demo_set, "stories": stories_set}, ["target_probability"]).to_dict()
    assert both["layer"][1]["encoding"]["x"]["field"] == "depth"  # 6 layers against 5: relative depth
    assert len(both["layer"][1]["encoding"]["color"]["scale"]["domain"]) == 4  # model · group · measure
