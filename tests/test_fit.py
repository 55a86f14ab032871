"""The kvstab.fit package as a whole: every public name importable from kvstab.fit, and the
``kvstab fit`` command line. The models are tested in test_fit_arrivals.py,
test_fit_lengths.py, test_fit_batch_logs.py and test_fit_optim.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import kvstab.fit
from kvstab import cli, fit


def test_public_names_are_importable_from_the_package():
    for name in kvstab.fit.__all__:
        assert getattr(fit, name) is not None, name
    assert fit.fit_batch_log.__module__ == "kvstab.fit.batch_logs"
    assert fit.fit_lengths.__module__ == "kvstab.fit.lengths"
    assert fit.fit_arrivals.__module__ == "kvstab.fit.arrivals"
    assert not hasattr(fit, "fit_batch_time")  # kvstab.calibrate.fit_batch_time is another job


def test_cli_fit_json(tmp_path, capsys, copula_data):
    # 12,000 requests, clipped like the Azure conversation trace (s <= 14,050, o <= 1,000),
    # so that every compiled kernel is shared with the tests above.
    s, o = copula_data
    s, o = np.minimum(s, 14050), np.minimum(o, 1000)
    t = np.cumsum(np.random.default_rng(8).exponential(0.25, s.size))
    path = tmp_path / "trace.csv"
    path.write_text(
        "arrival_s,prompt_tokens,output_tokens\n"
        + "".join(f"{a!r},{b},{c}\n" for a, b, c in zip(t.tolist(), s, o, strict=True))
    )
    rc = cli.main(["fit", "--trace", str(path), "--json", "--no-mmpp", "--steps", "100"])
    out, err = capsys.readouterr()
    assert rc == 0
    d = json.loads(out)
    for key in ("rate_per_s", "mean_g_empirical", "mean_g_fit", "loglik", "params", "arrivals"):
        assert key in d
    assert d["rate_per_s"] == pytest.approx(4.0, rel=0.05)
    assert abs(d["mean_g_fit"] / d["mean_g_empirical"] - 1) < 0.1
    assert d["arrivals"]["poisson"]["rate_per_s"] == pytest.approx(4.0, rel=0.05)
    assert "fitting" in err  # progress on stderr


def test_cli_fit_errors(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("arrival_s,prompt_tokens,output_tokens\n0,1,1\n1,x,1\n")
    assert cli.main(["fit", "--trace", str(bad), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--trace" in err[0] and "row 2 (line 3)" in err[0]
    assert cli.main(["fit", "--trace", str(bad), "--train-frac", "1.2"]) == 2
    assert "--train-frac" in capsys.readouterr().err
