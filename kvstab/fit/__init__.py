"""Calibration from traces: arrival processes, joint length laws and batch-time models.

Three independent models, one module each, all fitted by maximum likelihood (or a robust
loss) with optax L-BFGS on float32 losses written to stay accurate there (:mod:`._optim`):

* :mod:`kvstab.fit.arrivals`: the arrival process of a trace's inter-arrival gaps: Poisson
  (the paper's, PAPER.md §1), gamma renewal or a two-state MMPP, compared by AIC; samplers
  of arrival times from any fitted model.
* :mod:`kvstab.fit.lengths`: the joint law of prompt and output lengths (s, o): discretized
  log-normal (mixture) marginals joined by a Gaussian copula, fitted on 80 % of a trace and
  tested on E[g] of the other 20 % (PAPER.md §4).
* :mod:`kvstab.fit.batch_logs`: the batch time b = c₀ + c_p·P + c_d·D + c_kv·KV fitted to a
  per-batch timing log by Huber regression, and the paper's b̄ estimators (PAPER.md §4).

The public names of all three are importable from here (``from kvstab.fit import
fit_lengths``).
"""

from kvstab.fit._optim import Progress, log_ndtr_diff, log_ndtr_interval
from kvstab.fit.arrivals import (
    ArrivalFits,
    ArrivalModel,
    GammaRenewalFit,
    MMPP2Fit,
    PoissonFit,
    fit_arrivals,
    fit_gamma_renewal,
    fit_mmpp2,
    fit_poisson,
    mmpp2_loglik_reference,
    sample_arrivals,
    sample_gaps,
)
from kvstab.fit.batch_logs import (
    BATCH_COLUMNS,
    BatchLog,
    BatchLogFit,
    batch_time_estimators,
    fit_batch_log,
    read_batch_log,
    trimmed_mean,
)
from kvstab.fit.lengths import (
    CopulaFit,
    CopulaLogNormal,
    DiscreteLogNormalMixture,
    LengthFitReport,
    fit_copula_lognormal,
    fit_lengths,
    qq_data,
)

__all__ = [
    "BATCH_COLUMNS",
    "ArrivalFits",
    "ArrivalModel",
    "BatchLog",
    "BatchLogFit",
    "CopulaFit",
    "CopulaLogNormal",
    "DiscreteLogNormalMixture",
    "GammaRenewalFit",
    "LengthFitReport",
    "MMPP2Fit",
    "PoissonFit",
    "Progress",
    "batch_time_estimators",
    "fit_arrivals",
    "fit_batch_log",
    "fit_copula_lognormal",
    "fit_gamma_renewal",
    "fit_lengths",
    "fit_mmpp2",
    "fit_poisson",
    "log_ndtr_diff",
    "log_ndtr_interval",
    "mmpp2_loglik_reference",
    "qq_data",
    "read_batch_log",
    "sample_arrivals",
    "sample_gaps",
    "trimmed_mean",
]
