"""Trace readers (kvstab.traces): formats, every malformed-input error, statistics, real traces."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import jax
import numpy as np
import pytest

from kvstab.errors import InputError
from kvstab.laws import JointEmpirical
from kvstab.traces import Trace, detect_bucket_s, jitter_buckets, read_trace


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def raises(match: str):
    return pytest.raises(InputError, match=match)


# ---------------------------------------------------------------------------------------
# Formats


def test_generic_csv(tmp_path):
    p = write(
        tmp_path,
        "t.csv",
        "arrival_s,prompt_tokens,output_tokens\n10.5,100,20\n11.0,200,30\n\n13.25,50,5\n",
    )
    t = read_trace(p)
    assert t.format == "csv" and t.source == str(p) and len(t) == 3
    assert t.arrival_s.dtype == np.float64 and t.prompt.dtype == np.int64
    assert t.output.dtype == np.int64
    np.testing.assert_allclose(t.arrival_s, [0.0, 0.5, 2.75])
    np.testing.assert_array_equal(t.prompt, [100, 200, 50])
    np.testing.assert_array_equal(t.output, [20, 30, 5])
    assert t.num_dropped_zero == 0


def test_azure_keeps_100ns_ticks(tmp_path):
    p = write(
        tmp_path,
        "a.csv",
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 23:59:59.9999999,374,44\n"
        "2023-11-17 00:00:00.0000000,396,109\n"
        "2023-11-17 00:00:01.5000001,5,1\n",
    )
    t = read_trace(p)
    assert t.format == "azure"
    np.testing.assert_allclose(t.arrival_s, [0.0, 1e-7, 1.5000002], rtol=0, atol=1e-12)


@pytest.mark.parametrize("compress", [False, True])
def test_mooncake_jsonl(tmp_path, compress):
    lines = [
        {"timestamp": 0, "input_length": 6758, "output_length": 500, "hash_ids": [0, 1]},
        {"timestamp": 3000, "input_length": 7322, "output_length": 490, "hash_ids": []},
    ]
    text = "".join(json.dumps(x) + "\n" for x in lines)
    p = tmp_path / ("m.jsonl.gz" if compress else "m.jsonl")
    if compress:
        with gzip.open(p, "wt") as f:
            f.write(text)
    else:
        p.write_text(text)
    t = read_trace(p)
    assert t.format == "mooncake"
    np.testing.assert_allclose(t.arrival_s, [0.0, 3.0])
    np.testing.assert_array_equal(t.prompt, [6758, 7322])


def test_auto_detects_jsonl_by_content_and_gzip_by_magic(tmp_path):
    p = tmp_path / "trace.dat"
    with gzip.open(p, "wt") as f:
        f.write('{"timestamp": 5, "input_length": 3, "output_length": 4}\n')
    assert read_trace(p).format == "mooncake"


def test_column_mapping_and_time_unit(tmp_path):
    p = write(
        tmp_path,
        "b.csv",
        "Timestamp,Model,Request tokens,Response tokens\n0,gpt,10,0\n250,gpt,20,5\n1000,gpt,30,6\n",
    )
    cols = {
        "arrival_s": "Timestamp",
        "prompt_tokens": "Request tokens",
        "output_tokens": "Response tokens",
    }
    t = read_trace(p, columns=cols, drop_zero=True, time_unit_s=1e-3)
    np.testing.assert_allclose(t.arrival_s, [0.0, 0.75])
    np.testing.assert_array_equal(t.prompt, [20, 30])
    assert t.num_dropped_zero == 1


def test_integer_valued_floats_are_accepted(tmp_path):
    p = write(tmp_path, "t.csv", "arrival_s,prompt_tokens,output_tokens\n0,100.0,2e1\n")
    t = read_trace(p)
    assert t.prompt[0] == 100 and t.output[0] == 20


# ---------------------------------------------------------------------------------------
# Malformed traces: each error names the file and the row


HEADER = "arrival_s,prompt_tokens,output_tokens\n"


def test_empty_file(tmp_path):
    with raises("is empty"):
        read_trace(write(tmp_path, "e.csv", ""))


def test_header_only(tmp_path):
    with raises("is empty: no data rows"):
        read_trace(write(tmp_path, "h.csv", HEADER))


def test_empty_jsonl(tmp_path):
    with raises("is empty: no data rows"):
        read_trace(write(tmp_path, "e.jsonl", "\n\n"))


def test_missing_column(tmp_path):
    with raises(r"missing column\(s\) 'output_tokens'.*--columns arrival_s=NAME"):
        read_trace(write(tmp_path, "m.csv", "arrival_s,prompt_tokens\n0,1\n"))


def test_missing_azure_column(tmp_path):
    with raises(r"missing column\(s\) 'GeneratedTokens'"):
        read_trace(write(tmp_path, "a.csv", "TIMESTAMP,ContextTokens\n"), fmt="azure")


def test_unsorted_timestamps(tmp_path):
    p = write(tmp_path, "u.csv", HEADER + "0,1,1\n5,1,1\n4.5,1,1\n")
    with raises(r"row 3 \(line 4\): arrival time .* before the previous row.*sorted"):
        read_trace(p)


def test_unsorted_mooncake(tmp_path):
    p = write(
        tmp_path,
        "u.jsonl",
        '{"timestamp": 10, "input_length": 1, "output_length": 1}\n'
        '{"timestamp": 9, "input_length": 1, "output_length": 1}\n',
    )
    with raises(r"row 2 \(line 2\).*sorted"):
        read_trace(p)


def test_negative_tokens(tmp_path):
    p = write(tmp_path, "n.csv", HEADER + "0,1,1\n1,-3,1\n")
    with raises(r"row 2 \(line 3\): prompt_tokens must be >= 0 tokens, got '-3'"):
        read_trace(p)


def test_non_integer_tokens(tmp_path):
    p = write(tmp_path, "f.csv", HEADER + "0,1,2.5\n")
    with raises(r"row 1 \(line 2\): output_tokens must be an integer number of tokens"):
        read_trace(p)


def test_non_integer_tokens_jsonl(tmp_path):
    p = write(tmp_path, "f.jsonl", '{"timestamp": 0, "input_length": 7.5, "output_length": 1}\n')
    with raises(r"row 1 \(line 1\): input_length must be an integer"):
        read_trace(p)


def test_unparsable_token_value(tmp_path):
    p = write(tmp_path, "x.csv", HEADER + "0,1,1\n1,abc,1\n")
    with raises(r"row 2 \(line 3\): cannot parse prompt_tokens 'abc'"):
        read_trace(p)


def test_unparsable_field_count(tmp_path):
    p = write(tmp_path, "x.csv", HEADER + "0,1,1\n1,2\n")
    with raises(r"row 2 \(line 3\): expected 3 fields"):
        read_trace(p)


def test_unparsable_timestamp(tmp_path):
    p = write(
        tmp_path,
        "a.csv",
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:15:46.6805900,374,44\nyesterday,1,1\n",
    )
    with raises(r"row 2 \(line 3\): cannot parse TIMESTAMP 'yesterday'"):
        read_trace(p)


def test_invalid_date(tmp_path):
    p = write(
        tmp_path,
        "a.csv",
        "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-02-30 18:15:46.68,374,44\n",
    )
    with raises(r"row 1 \(line 2\): invalid date"):
        read_trace(p)


def test_unparsable_json_line_counts_blank_lines(tmp_path):
    p = write(
        tmp_path,
        "j.jsonl",
        '{"timestamp": 0, "input_length": 1, "output_length": 1}\n\n{not json\n',
    )
    with raises(r"row 2 \(line 3\): not valid JSON"):
        read_trace(p)


def test_jsonl_missing_key(tmp_path):
    p = write(tmp_path, "j.jsonl", '{"timestamp": 0, "input_length": 1}\n')
    with raises(r"row 1 \(line 1\): missing key\(s\) 'output_length'"):
        read_trace(p)


def test_jsonl_wrong_type(tmp_path):
    p = write(tmp_path, "j.jsonl", '{"timestamp": 0, "input_length": "many", "output_length": 1}\n')
    with raises(r"row 1 \(line 1\): cannot parse input_length 'many'"):
        read_trace(p)


def test_zero_tokens_is_an_error_naming_drop_zero(tmp_path):
    p = write(tmp_path, "z.csv", HEADER + "0,5,1\n1,5,0\n2,5,3\n")
    with raises(r"row 2 \(line 3\): zero output tokens.*drop_zero=True"):
        read_trace(p)
    t = read_trace(p, drop_zero=True)
    assert len(t) == 2 and t.num_dropped_zero == 1
    np.testing.assert_array_equal(t.output, [1, 3])
    np.testing.assert_allclose(t.arrival_s, [0.0, 2.0])


def test_zero_prompt_tokens(tmp_path):
    p = write(tmp_path, "z.csv", HEADER + "0,0,1\n")
    with raises(r"row 1 \(line 2\): zero prompt tokens"):
        read_trace(p)


def test_all_rows_dropped(tmp_path):
    p = write(tmp_path, "z.csv", HEADER + "0,0,0\n1,0,0\n")
    with raises("no rows left after dropping 2 zero-token rows"):
        read_trace(p, drop_zero=True)


def test_missing_file_and_bad_options(tmp_path):
    with raises("no such file"):
        read_trace(tmp_path / "nope.csv")
    p = write(tmp_path, "t.csv", HEADER + "0,1,1\n")
    with pytest.raises(InputError) as e:
        read_trace(p, fmt="parquet")
    assert e.value.field == "trace_format"
    with pytest.raises(InputError) as e:
        read_trace(p, columns={"arrival": "t"})
    assert e.value.field == "columns"


def test_binary_file(tmp_path):
    p = tmp_path / "b.csv"
    p.write_bytes(b"\xff\xfe\x00\x81garbage")
    with raises("not a UTF-8 text file"):
        read_trace(p)


# ---------------------------------------------------------------------------------------
# The Trace object


def small_trace() -> Trace:
    t = np.array([0.0, 0.4, 0.9, 1.2, 2.5, 2.6, 4.0])
    s = np.array([100, 600, 520, 10, 2000, 64, 300])
    o = np.array([10, 5, 1, 200, 30, 7, 12])
    return Trace(t + 7.0, s, o, source="unit")


def test_trace_validates_arrays():
    with pytest.raises(InputError, match="non-decreasing"):
        Trace([0.0, 2.0, 1.0], [1, 1, 1], [1, 1, 1])
    with pytest.raises(InputError, match="integers >= 1"):
        Trace([0.0, 1.0], [1, 0], [1, 1])
    with pytest.raises(InputError, match="equally many"):
        Trace([0.0, 1.0], [1], [1, 1])


def test_split_is_chronological():
    tr = small_trace()
    assert tr.arrival_s[0] == 0.0
    train, test = tr.split(0.8)
    assert (len(train), len(test)) == (5, 2)  # floor(0.8 * 7)
    np.testing.assert_array_equal(train.prompt, tr.prompt[:5])
    np.testing.assert_array_equal(test.prompt, tr.prompt[5:])
    assert test.arrival_s[0] == 0.0 and test.start_offset_s == pytest.approx(2.6)
    with pytest.raises(InputError) as e:
        tr.split(1.0)
    assert e.value.field == "frac"


def test_summary_matches_direct_computation():
    from kvstab.analytic import g

    tr = small_trace()
    d = tr.summary(chunk_tokens=512)
    gaps = np.diff(tr.arrival_s)
    assert d["num_requests"] == 7 and d["rate_per_s"] == pytest.approx(6 / 4.0)
    assert d["interarrival_cv"] == pytest.approx(gaps.std() / gaps.mean())
    counts = np.array([3, 1, 2, 0, 1])  # arrivals in [0,1), [1,2), ..., [4,5)
    assert d["dispersion_index_1s"] == pytest.approx(counts.var() / counts.mean())
    assert d["corr_prompt_output"] == pytest.approx(np.corrcoef(tr.prompt, tr.output)[0, 1])
    exact = np.mean(np.asarray(g(tr.prompt, tr.output, 512, "exact"), np.float64))
    paper = np.mean(np.asarray(g(tr.prompt, tr.output, 512, "paper"), np.float64))
    assert d["mean_g_exact"] == pytest.approx(exact, rel=1e-6)  # float64 twin of analytic.g
    assert d["mean_g_paper"] == pytest.approx(paper, rel=1e-6)
    assert d["mean_g_exact"] == pytest.approx(float(tr.joint_law().mean_g(512)), rel=1e-6)
    with pytest.raises(InputError):
        tr.mean_g(512, "approx")
    assert d["prompt"]["p50"] == 300 and d["output"]["max"] == 200
    assert d["bucket_s"] is None
    json.dumps(d)  # serialisable


def test_joint_law_is_the_empirical_pairs():
    tr = small_trace()
    law = tr.joint_law()
    assert isinstance(law, JointEmpirical) and law.size == 7
    np.testing.assert_array_equal(law.prompts, tr.prompt)


def test_jitter_buckets():
    t = np.repeat([0.0, 3.0, 6.0], 4)
    tr = Trace(t, np.arange(1, 13), np.arange(101, 113))
    assert detect_bucket_s(tr) == 3.0
    j = jitter_buckets(tr, 3.0, jax.random.key(1))
    assert np.all(np.diff(j.arrival_s) > 0) and j.arrival_s[0] == 0.0
    assert detect_bucket_s(j) is None
    jittered = j.arrival_s + j.start_offset_s  # back on the original clock
    # Each request (identified by its prompt 1..12) stays inside its own 3-s bucket.
    np.testing.assert_array_equal(np.floor(jittered / 3.0) * 3.0, t[j.prompt - 1])
    np.testing.assert_array_equal(j.output - j.prompt, 100)  # pairs stay together
    with pytest.raises(InputError):
        jitter_buckets(tr, 0.0, jax.random.key(1))


# ---------------------------------------------------------------------------------------
# The real traces (row counts and statistics from the data README)


REAL = {
    "AzureLLMInferenceTrace_code.csv": (8819, 2.566, 13.15, 0.001, 59416),
    "AzureLLMInferenceTrace_conv.csv": (19366, 5.530, 1.09, -0.112, 259047),
    "mooncake_fast25_conversation_trace.jsonl.gz": (12031, 3.401, 3.03, 0.072, 4497181),
    "mooncake_fast25_synthetic_trace.jsonl.gz": (3993, 3.906, 1.01, -0.374, 1087367),
}


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_traces(name, trace_dir):
    rows, rate, cv, corr, area = REAL[name]
    tr = read_trace(trace_dir / name)
    d = tr.summary()
    assert len(tr) == rows and tr.num_dropped_zero == 0
    assert tr.format == ("azure" if name.startswith("Azure") else "mooncake")
    assert d["rate_per_s"] == pytest.approx(rate, abs=1e-3)
    assert d["interarrival_cv"] == pytest.approx(cv, abs=0.01)
    assert d["corr_prompt_output"] == pytest.approx(corr, abs=1e-3)
    assert d["mean_o_s_plus_half_o"] == pytest.approx(area, abs=1)
    assert (d["bucket_s"] == 3.0) == ("conversation" in name and "mooncake" in name)
    assert math.isfinite(d["mean_g_exact"]) and d["mean_g_exact"] > area
