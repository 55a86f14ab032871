"""One request's life: the bottom of kvstab (docs/semantics.md "Request life", PAPER.md §2).

A request with prompt s and output o runs C = ⌈s/ŝ⌉ prefill chunks, then o decode steps:
lifetime L = C + o steps. After p steps of life it holds

    mem(p) = min(p·ŝ, s)      for p <= C
    mem(p) = s + (p − C)      for p > C

KV tokens, and over its whole life it occupies the memory area g(s, o) = Σ_{p=1..L} mem(p)
token·steps, the quantity the paper's critical rate μ = M / (b̄·E[g]) divides by.

Everything else builds on these definitions: the length laws and closed forms
(:mod:`kvstab.laws`, :mod:`kvstab.analytic`) take E[g], the reference simulator
(:mod:`kvstab.reference`) steps ``mem`` one request at a time, and the JAX simulator
(:mod:`kvstab.sim`) writes the same life into its calendar. This module imports nothing
of kvstab but its error type, so there is no import cycle above it.

The integer functions take Python ints (the reference) or integer arrays (numpy or jax.numpy,
elementwise); the areas return floats and differentiate with ``jax.grad``.
"""

from __future__ import annotations

import jax.numpy as jnp

from kvstab.errors import InputError

G_FORMS = ("exact", "paper")


def num_chunks(s, chunk):
    """C = ⌈s/ŝ⌉, the number of prefill steps (s >= 1, ŝ >= 1)."""
    return -(-s // chunk)


def lifetime(s, o, chunk):
    """L = C + o steps from the first chunk to the last decode token."""
    return num_chunks(s, chunk) + o


def last_chunk(s, chunk):
    """Tokens of the last prefill chunk, s − (C−1)·ŝ, in 1..ŝ."""
    return s - (num_chunks(s, chunk) - 1) * chunk


def mem(p: int, s: int, chunk: int) -> int:
    """KV tokens held after p steps of life (Python ints):
    min(p·ŝ, s) for p <= C, s + (p − C) for p > C."""
    c = num_chunks(s, chunk)
    if p <= c:
        return min(p * chunk, s)
    return s + (p - c)


def mem_array(p, s, c, chunk):
    """:func:`mem` elementwise on arrays, given C = ``c`` already computed."""
    return jnp.where(p <= c, jnp.minimum(p * chunk, s), s + p - c)


def growth(p: int, s: int, chunk: int) -> int:
    """Tokens added by executing the step at position p: mem(p+1) − mem(p).

    ŝ for p < C−1, s − (C−1)·ŝ for the last chunk p = C−1, and 1 for a decode step C <= p < L.
    """
    return mem(p + 1, s, chunk) - mem(p, s, chunk)


def is_prefill(p: int, s: int, chunk: int) -> bool:
    """True if the step executed at position p is a prefill chunk (p < C), else a decode."""
    return p < num_chunks(s, chunk)


def check_form(form: str) -> None:
    """Raise the package's input error unless ``form`` is one of :data:`G_FORMS`."""
    if form not in G_FORMS:
        raise InputError("g_form", f"must be one of {', '.join(G_FORMS)}, got {form!r}")


def prefill_area(s, chunk_tokens, form: str = "exact"):
    """Memory area of the prefill phase, token·steps.

    exact: Σ_{j=1}^{⌈s/ŝ⌉} min(j ŝ, s) = ŝ·c(c−1)/2 + s with c = ⌈s/ŝ⌉ (PAPER.md §2);
    paper: (1 + s/ŝ)·s/2, which equals the exact sum when ŝ divides s.
    """
    check_form(form)
    s = jnp.asarray(s, jnp.result_type(float))
    if form == "paper":
        return (1.0 + s / chunk_tokens) * s / 2.0
    c = jnp.ceil(s / chunk_tokens)
    return chunk_tokens * c * (c - 1.0) / 2.0 + s


def g(s, o, chunk_tokens, form: str = "exact"):
    """Lifetime memory g(s, o) in token·steps (PAPER.md §2), elementwise.

    g = prefill area + s·o (prompt held during decode) + o(o+1)/2 (decode accumulation).
    """
    s = jnp.asarray(s, jnp.result_type(float))
    o = jnp.asarray(o, jnp.result_type(float))
    return prefill_area(s, chunk_tokens, form) + s * o + o * (o + 1.0) / 2.0


def g_exact(s, o, chunk_tokens):
    """Exact g for any chunk size: the area a simulator measures, Σ_{p=1..L} mem(p)."""
    return g(s, o, chunk_tokens, "exact")


def g_paper(s, o, chunk_tokens):
    """The paper's closed form [(1 + s/ŝ)s + 2os + (1 + o)o]/2."""
    return g(s, o, chunk_tokens, "paper")
