# Per-pixel tridiagonal algebra (twin of the valid-read part of `_gather_block` and of the
# `_factor`, `_forward`, `_backward`, `_chi2_pixel` and `_median_rate` kernels of
# `pyapred/solver/_numpy.py`, and of its block-wise `_block_pass` and `_block_median_rate`).
#
# K read differences d_k per pixel, design vector x_k = omega_k * dt_k, single-read noise variance
# s2. The covariance C = diag(max(rate * x, 0)) + s2 * tridiag(-1, 2, -1) is factored as L D L^T
# (unit lower-bidiagonal L, pivots D), so quadratic forms need only the forward substitution:
# p^T C^-1 q = sum_k (L^-1 p)_k (L^-1 q)_k / D_k. A masked difference is decoupled (its
# off-diagonal entries zeroed, its diagonal set to 1) and its data and design entries set to 0,
# which is exactly the GLS fit of the unmasked subset.

"Positivity floor of the reference implementation (`min_b_val`, `min_f_val`)."
const CLAMP_FLOOR = 1e-10

"""
    valid_reads!(valid_read, ramp, bad, use_mask, saturation)

Fill `valid_read` (length `n_reads`) for one ramp and return the pixel's read flags.

# Arguments
- `ramp`: the reads of one pixel, in the units of `saturation`.
- `bad`: `true` marks a bad read; ignored unless `use_mask`.
- `saturation`: the first read at or above it and every later read are masked.
"""
@inline function valid_reads!(valid_read::AbstractVector{Bool}, ramp::AbstractVector,
        bad::AbstractVector{Bool}, use_mask::Bool, saturation::Real)
    flags = 0
    saturated = false
    for j in eachindex(ramp)
        value = ramp[j]
        ok = true
        if use_mask && bad[j]
            ok = false
            flags |= MASKED_READ
        end
        if !isfinite(value)
            ok = false
            flags |= NONFINITE_READ
        elseif value >= saturation
            saturated = true
        end
        if saturated
            ok = false
            flags |= SATURATED
        end
        valid_read[j] = ok
    end
    return flags
end

"""
    factor!(alpha, beta, piv, low, x, valid, s2, rate)

L D L^T factorisation of `C(rate)` for one pixel: fills `piv` (D) and `low` (the sub-diagonal of
L, `low[k] = beta[k-1] / piv[k-1]`); `alpha` and `beta` receive the diagonal and super-diagonal of C.
"""
@inline function factor!(alpha, beta, piv, low, x, valid, s2, rate)
    K = length(x)
    @inbounds for k in 1:K
        alpha[k] = valid[k] ? max(rate * x[k], 0.0) + 2.0 * s2 : 1.0
        beta[k] = k < K && valid[k] && valid[k + 1] ? -s2 : 0.0
    end
    @inbounds piv[1] = alpha[1]
    @inbounds low[1] = 0.0
    @inbounds for k in 2:K
        low[k] = beta[k - 1] / piv[k - 1]
        piv[k] = alpha[k] - low[k] * beta[k - 1]
    end
    return nothing
end

"""
    forward!(out, low, rhs)

Forward substitution `out = L^-1 rhs`.
"""
@inline function forward!(out, low, rhs)
    @inbounds out[1] = rhs[1]
    @inbounds for k in 2:length(rhs)
        out[k] = rhs[k] - low[k] * out[k - 1]
    end
    return out
end

"""
    backward!(out, low, piv, y)

Finish a solve: `out = L^-T D^-1 y` where `y = L^-1 rhs`.
"""
@inline function backward!(out, low, piv, y)
    K = length(y)
    @inbounds out[K] = y[K] / piv[K]
    @inbounds for k in (K - 1):-1:1
        out[k] = y[k] / piv[k] - low[k + 1] * out[k + 1]
    end
    return out
end

"""
    gls_pixel(d, x, valid, s2, a0, n_pass, work)

Constant-model GLS of `d = f x + noise` with the covariance refreshed `n_pass` times, starting from
the rate `a0`. Returns `(flux, variance, chi2)`: the variance is from the last pass (covariance
built from the previous estimate); chi2 uses the covariance at the final flux.

# Arguments
- `d`, `x`: differences (e-) and design vector, 0 where `valid` is false.
- `work`: a `(K, 6)` scratch matrix.
"""
function gls_pixel(d, x, valid, s2, a0, n_pass, work)
    alpha, beta, piv, low = view(work, :, 1), view(work, :, 2), view(work, :, 3), view(work, :, 4)
    yx, yd = view(work, :, 5), view(work, :, 6)
    rate = a0
    flux = 0.0
    var = NaN
    for _ in 1:n_pass
        factor!(alpha, beta, piv, low, x, valid, s2, rate)
        forward!(yx, low, x)
        forward!(yd, low, d)
        sxx = 0.0
        sxd = 0.0
        @inbounds for k in eachindex(yx)
            sxx += yx[k] * yx[k] / piv[k]
            sxd += yx[k] * yd[k] / piv[k]
        end
        flux = sxd / sxx
        var = 1.0 / sxx
        rate = max(flux, 0.0)
    end
    return flux, var, chi2_pixel(d, x, valid, s2, flux, work)
end

"""
    chi2_pixel(d, x, valid, s2, flux, work)

`(d - f x)^T C(f)^-1 (d - f x)` with the photon noise at `max(f x, 0)` (eq 24).
"""
function chi2_pixel(d, x, valid, s2, flux, work)
    alpha, beta, piv, low = view(work, :, 1), view(work, :, 2), view(work, :, 3), view(work, :, 4)
    resid, y = view(work, :, 5), view(work, :, 6)
    factor!(alpha, beta, piv, low, x, valid, s2, flux)
    @inbounds for k in eachindex(resid)
        resid[k] = valid[k] ? d[k] - flux * x[k] : 0.0
    end
    forward!(y, low, resid)
    chi2 = 0.0
    @inbounds for k in eachindex(y)
        chi2 += y[k] * y[k] / piv[k]
    end
    return chi2
end

"""
    median_rate(d, x, valid, buf)

Median of `d_k / x_k` over usable differences with `x_k > 0`, clipped at 0 (0 when there is none).
"""
function median_rate(d, x, valid, buf)
    n = 0
    @inbounds for k in eachindex(d)
        if valid[k] && x[k] > 0.0
            n += 1
            buf[n] = d[k] / x[k]
        end
    end
    n == 0 && return 0.0
    b = sort!(view(buf, 1:n))
    med = isodd(n) ? b[n ÷ 2 + 1] : 0.5 * (b[n ÷ 2] + b[n ÷ 2 + 1])
    return max(med, 0.0)
end
