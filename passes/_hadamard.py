"""Hadamard matrices for the ``rotate`` pass: Sylvester (2^k), Paley I (q + 1 for a prime
q = 3 mod 4), Paley II (2(q + 1) for a prime q = 1 mod 4) and Kronecker products of them.

``factors(n)`` splits n into orders that each have a Hadamard matrix here, so that
``H_n = H_f1 (x) H_f2 (x) ...`` (normalized: orthogonal); None when n has no such split (n not
1, 2 or a multiple of 4 made of known orders), then the rotation falls back to a dense
random orthogonal matrix (:func:`random_orthogonal`).
"""
from __future__ import annotations

from functools import cache

import numpy as np

MAX_FACTOR = 32
"""Powers of two are split into factors of at most this order (small MatMuls online)."""


def _is_prime(q: int) -> bool:
    return q >= 2 and all(q % p for p in range(2, int(q ** 0.5) + 1))


def _jacobsthal(q: int) -> np.ndarray:
    squares = {(i * i) % q for i in range(1, q)}
    chi = np.array([0] + [1 if i in squares else -1 for i in range(1, q)], np.int64)
    idx = (np.arange(q)[None, :] - np.arange(q)[:, None]) % q
    return chi[idx]


@cache
def _paley(n: int) -> np.ndarray | None:
    """An order-n Hadamard matrix (entries +-1) from a Paley construction, or None."""
    q = n - 1
    if q % 4 == 3 and _is_prime(q):
        s = np.zeros((n, n), np.int64)
        s[0, 1:] = 1
        s[1:, 0] = -1
        s[1:, 1:] = _jacobsthal(q)
        return s + np.eye(n, dtype=np.int64)
    if n % 2 == 0:
        q = n // 2 - 1
        if q % 4 == 1 and _is_prime(q):
            c = np.zeros((q + 1, q + 1), np.int64)
            c[0, 1:] = 1
            c[1:, 0] = 1
            c[1:, 1:] = _jacobsthal(q)
            return (np.kron(c, np.array([[1, 1], [1, -1]])) + np.kron(np.eye(q + 1, dtype=np.int64),
                                                                     np.array([[1, -1], [-1, -1]])))
    return None


@cache
def hadamard(n: int) -> np.ndarray:
    """The order-n Hadamard matrix (+-1 entries, not normalized) for n a power of two or a
    Paley order; raises ValueError otherwise."""
    if n >= 1 and n & (n - 1) == 0:
        h = np.ones((1, 1), np.int64)
        while h.shape[0] < n:
            h = np.block([[h, h], [h, -h]])
        return h
    p = _paley(n)
    if p is None or not np.array_equal(p @ p.T, n * np.eye(n, dtype=np.int64)):
        raise ValueError(f"no Hadamard matrix of order {n} here")
    return p


def _paley_order(n: int) -> bool:
    try:
        hadamard(n)
    except ValueError:
        return False
    return n & (n - 1) != 0


def factors(n: int) -> list[int] | None:
    """Orders whose Kronecker product is a Hadamard matrix of order n: at most one Paley
    order (the smallest that leaves a power of two) and powers of two <= MAX_FACTOR."""
    if n < 1:
        return None
    odd = n
    while odd % 2 == 0:
        odd //= 2
    head: list[int] = []
    rest = n
    if odd > 1:
        for m in range(odd, n + 1, odd):
            if n % m == 0 and (n // m) & (n // m - 1) == 0 and _paley_order(m):
                head, rest = [m], n // m
                break
        else:
            return None
    out = head
    while rest > 1:
        f = min(rest, MAX_FACTOR)
        out.append(f)
        rest //= f
    return out or [1]


def normalized(fs: list[int]) -> np.ndarray:
    """``H_f1 (x) H_f2 (x) ...`` / sqrt(n), float64 (orthogonal)."""
    h = np.ones((1, 1))
    for f in fs:
        h = np.kron(h, hadamard(f).astype(np.float64) / np.sqrt(f))
    return h


def random_orthogonal(n: int, rng: np.random.Generator) -> np.ndarray:
    """A random orthogonal matrix (Haar: QR of a Gaussian with the signs of R's diagonal)."""
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))[None, :]


def randomized_hadamard(n: int, seed: int) -> tuple[np.ndarray, str]:
    """``diag(s) H_n / sqrt(n)`` with random signs s (seeded), float64, and how it was made;
    a dense random orthogonal matrix when n has no Hadamard matrix here."""
    rng = np.random.default_rng(seed)
    fs = factors(n)
    if fs is None:
        return random_orthogonal(n, rng), f"random orthogonal {n}x{n} (no Hadamard of order {n} here)"
    signs = rng.choice(np.array([-1.0, 1.0]), size=n)
    return signs[:, None] * normalized(fs), "randomized Hadamard " + " x ".join(map(str, fs))
