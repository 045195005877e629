# Special functions of the exposure stages, written with Base only (the package uses standard
# libraries only, and Base has no erf, gamma function or chi-squared distribution):
#
# - `ndtr`, the standard normal CDF, for the trace profiles (`pyapred.traces` uses SciPy's `ndtr`
#   and `math.erf`/`math.erfc`);
# - `chi2_sf`, the chi-squared survival function (`scipy.stats.chi2.sf`), for the p-values of the
#   model choice, through the regularized upper incomplete gamma function `gamma_q`.
#
# Accuracy, measured against SciPy with a line-for-line Python port of these functions
# (`tests/test_julia_package.py`): `ndtr` within 6e-16 absolute over [-40, 40] (so a difference
# of two, the light of a trace in a pixel, is right to about 1e-15 absolute); `chi2_sf` within
# 3e-13 relative wherever it is above 1e-300, for 1 to 400 degrees of freedom.

"""
    erf_series(x)

`erf(x)` for `0 <= x < 2.5` from the series of positive terms
`erf(x) = 2/sqrt(pi) exp(-x^2) sum_n 2^n x^(2n+1) / (1 3 5 ... (2n+1))` (no cancellation).
"""
function erf_series(x::Float64)
    term = x
    total = x
    n = 0
    while term > 1e-17 * total
        n += 1
        term *= 2.0 * x * x / (2n + 1)
        total += term
    end
    return 2.0 / sqrt(pi) * exp(-x * x) * total
end

"""
    erfc_fraction(x)

`erfc(x)` for `x >= 2.5` from its continued fraction
`erfc(x) = exp(-x^2)/sqrt(pi) / (x + (1/2)/(x + 1/(x + (3/2)/(x + 2/(x + ...)))))`, evaluated by
the modified Lentz method (as `log_erfc`).
"""
erfc_fraction(x::Float64) = exp(-x * x) / sqrt(pi) / erfc_denominator(x)

"""
    erfc_denominator(x)

The continued fraction `x + (1/2)/(x + 1/(x + (3/2)/(x + 2/(x + ...))))` of
`erfc(x) = exp(-x^2)/sqrt(pi) / fraction`, by the modified Lentz method; used for `x >= 2` by
`erfc_fraction` and `log_erfc`.
"""
function erfc_denominator(x::Float64)
    tiny = 1e-300
    f = x
    c = x
    d = 0.0
    for n in 1:5000
        a = n / 2
        d = x + a * d
        d = abs(d) < tiny ? tiny : d
        c = x + a / c
        c = abs(c) < tiny ? tiny : c
        d = 1.0 / d
        delta = c * d
        f *= delta
        abs(delta - 1.0) < 1e-16 && break
    end
    return f
end

"""
    ndtr(a)

The standard normal CDF `P(Z <= a)`: `(1 + erf(a / sqrt 2)) / 2` near 0, `erfc(|a| / sqrt 2) / 2`
in the tails (accurate to about 6e-16 absolute). NaN gives NaN.
"""
function ndtr(a::Real)
    x = Float64(a) * 0.7071067811865476
    isnan(x) && return NaN
    z = abs(x)
    if z < 2.5
        e = erf_series(z)
        return x >= 0 ? 0.5 + 0.5 * e : 0.5 - 0.5 * e
    end
    y = isinf(z) ? 0.0 : 0.5 * erfc_fraction(z)
    return x > 0 ? 1.0 - y : y
end

"""
    loggamma_half(a)

`log(Gamma(a))` for `a` a positive multiple of 1/2 (the shape `dof / 2` of a chi-squared
distribution): `log((n - 1)!)` for `a = n`, `log(sqrt(pi) prod_{k=1}^{m} (k - 1/2))` for
`a = m + 1/2`, summed term by term (relative error about `a` ulps).
"""
function loggamma_half(a::Float64)
    twice = round(Int, 2a)
    (twice >= 1 && twice == 2a) ||
        throw(ArgumentError("loggamma_half: expected a positive multiple of 1/2, got $a"))
    total = 0.0
    if iseven(twice)
        for k in 2:(twice ÷ 2 - 1)
            total += log(k)
        end
    else
        total = 0.5 * log(pi)
        for k in 1:(twice ÷ 2)
            total += log(k - 0.5)
        end
    end
    return total
end

"""
    gamma_q(a, x)

The regularized upper incomplete gamma function `Q(a, x) = Gamma(a, x) / Gamma(a)`, for `a` a
positive multiple of 1/2: the series of `P = 1 - Q` below `x = a + 1`, the continued fraction of
`Q` (modified Lentz) above it, each until its terms change the result by less than 1e-16.
`Q(a, x <= 0) = 1`, `Q(a, Inf) = 0`, NaN gives NaN.
"""
function gamma_q(a::Real, x::Real)
    a = Float64(a)
    x = Float64(x)
    isnan(x) && return NaN
    x <= 0 && return 1.0
    isinf(x) && return 0.0
    log_prefactor = -x + a * log(x) - loggamma_half(a)
    if x < a + 1.0
        # P(a, x) = exp(-x) x^a / Gamma(a + 1) sum_n x^n / ((a + 1) ... (a + n)).
        term = 1.0 / a
        total = term
        ap = a
        for _ in 1:10_000
            ap += 1.0
            term *= x / ap
            total += term
            abs(term) < abs(total) * 1e-16 && break
        end
        return 1.0 - total * exp(log_prefactor)
    end
    # Q(a, x) = exp(-x) x^a / Gamma(a) / (x + 1 - a - 1 (1 - a) / (x + 3 - a - 2 (2 - a) / ...)).
    tiny = 1e-300
    b = x + 1.0 - a
    c = 1.0 / tiny
    d = 1.0 / b
    h = d
    for i in 1:10_000
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = abs(d) < tiny ? tiny : d
        c = b + an / c
        c = abs(c) < tiny ? tiny : c
        d = 1.0 / d
        delta = d * c
        h *= delta
        abs(delta - 1.0) < 1e-16 && break
    end
    return exp(log_prefactor) * h
end

"""
    chi2_sf(x, dof)

The survival function `P(X > x)` of the chi-squared distribution with `dof` degrees of freedom
(`scipy.stats.chi2.sf`): `gamma_q(dof / 2, x / 2)`.
"""
chi2_sf(x::Real, dof::Integer) = gamma_q(dof / 2, x / 2)
