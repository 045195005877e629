# The chromatic time-variable model: omega that changes linearly with wavelength. The twin of
# `pyapred/solver/_chromatic.py` (`chromatic_normal_kernel`, `chromatic_chi2_kernel`,
# `chromatic_objective_change_kernel`, `fit_chromatic_groups`) and of the public
# `fit_omega_chromatic` in `pyapred/solver/api.py`.
#
# Read difference k of pixel p is `f_p (a_k + c_p b_k) dt_k`, with `c_p` the pixel's normalised
# wavelength coordinate; `a = omega` (the transparency at c = 0) and `b = omega * gamma` (its
# slope). The model is linear in the fluxes, so they are eliminated by the Schur complement as in
# the achromatic fit (`normal_equations_kernel!`); the parameter block grows from K to 2K, with
# `a[ref] = 1` and `b[ref] = 0` pinned. Every pixel's contribution to the 2K x 2K block is
# `[1 c; c c^2] (x) M_p`, with `M_p` the pixel's K x K block of the achromatic fit at its own omega
# `a + c_p b`: the kernel accumulates the three moments `sum_p c_p^j M_p` (j = 0, 1, 2)
# (`docs/model.md`, "Chromatic transparency").
#
# Layout: `diffs` and `valid` are `(K, P, G)` (the C-order NumPy `(G, P, K)` seen from Julia),
# per-pixel arrays `(P, G)`, `a` and `b` `(K, G)`; everything is in electrons.

"Halvings of the chromatic fit's line search before a group is declared stuck (NumPy's 30)."
const CHROMATIC_MAX_HALVINGS = 30

"Iterations before a group may be declared converged (NumPy's `MIN_ITER`, as `fit_omega_groups`)."
const CHROMATIC_MIN_ITER = 2

"""
    chromatic_normal_group!(out_g, out_gw, e_hat, gf_hat, sqrt_d, diffs, valid, s2, dt, flux,
                            a, b, coord, fit_pixel)

The Gauss-Newton normal equations of one group of the chromatic model (see
[`chromatic_normal_kernel!`](@ref)), written step for step as NumPy's kernel.

# Arguments
- `out_g`: `(K, K, 3)` the moments `sum_p c_p^m flux_p^2 diag(dt) C_p^-1 diag(dt)`, m = 0, 1, 2.
- `out_gw`: `(K, 2)` the gradients `sum_p c_p^m flux_p dt .* (C_p^-1 r_p)`, m = 0, 1.
- `e_hat` `(K, P)`, `gf_hat`, `sqrt_d` `(P,)`: the per-pixel flux blocks of the omega part.
- `diffs`, `valid`: `(K, P)`; `s2`, `flux`, `coord`, `fit_pixel`: `(P,)`; `a`, `b`, `dt`: `(K,)`.
"""
function chromatic_normal_group!(out_g, out_gw, e_hat, gf_hat, sqrt_d, diffs, valid, s2, dt,
        flux, a, b, coord, fit_pixel)
    K, P = size(diffs)
    low, inv_piv, yx, yr = zeros(K), zeros(K), zeros(K), zeros(K)
    u, z, diag_inv, running = zeros(K), zeros(K), zeros(K), zeros(K)
    block_start = zeros(Int, K)
    # One-block pixels (C^-1 without a decoupled difference) become columns of `left` and `right`
    # (one matrix product per moment below); the others are summed into `acc` here.
    left, right = zeros(K, P), zeros(K, P)
    acc = zeros(K, K, 3)  # acc[i, j, m], i <= j
    accw = zeros(K, 2)
    for p in 1:P
        if !fit_pixel[p]
            sqrt_d[p] = 0.0
            gf_hat[p] = 0.0
            e_hat[:, p] .= 0.0
            continue
        end
        f = flux[p]
        c = coord[p]
        var = s2[p]
        dd = 0.0
        gf = 0.0
        @inbounds for k in 1:K
            ok = valid[k, p]
            xk = ok ? (a[k] + c * b[k]) * dt[k] : 0.0
            rk = ok ? diffs[k, p] - f * xk : 0.0
            alpha = ok ? max(f * xk, 0.0) + 2.0 * var : 1.0
            beta = ok && k > 1 && valid[k - 1, p] ? -var : 0.0
            lk = k > 1 ? beta * inv_piv[k - 1] : 0.0
            low[k] = lk
            inv_piv[k] = 1.0 / (alpha - lk * beta)
            yx[k] = k > 1 ? xk - lk * yx[k - 1] : xk
            yr[k] = k > 1 ? rk - lk * yr[k - 1] : rk
            dd += yx[k] * yx[k] * inv_piv[k]
            gf += yx[k] * yr[k] * inv_piv[k]
        end
        sd = sqrt(dd)
        sqrt_d[p] = sd
        gf_hat[p] = gf / sd
        u[K] = yx[K] * inv_piv[K]
        z[K] = yr[K] * inv_piv[K]
        diag_inv[K] = inv_piv[K]
        @inbounds for k in (K - 1):-1:1
            u[k] = yx[k] * inv_piv[k] - low[k + 1] * u[k + 1]
            z[k] = yr[k] * inv_piv[k] - low[k + 1] * z[k + 1]
            diag_inv[k] = inv_piv[k] + low[k + 1] * low[k + 1] * diag_inv[k + 1]
        end
        inv_sd = 1.0 / sd
        @inbounds for k in 1:K
            ok = valid[k, p]
            e_hat[k, p] = ok ? f * dt[k] * u[k] * inv_sd : 0.0
            w = ok ? f * dt[k] * z[k] : 0.0
            accw[k, 1] += w
            accw[k, 2] += c * w
        end
        # The full C^-1 from the pivot ratios: C^-1[i, j] = running[j] / running[i] * diag[j]
        # (i <= j in one block); a block ends at a decoupled difference or an underflow.
        f2 = f * f
        ratio_prod = 1.0
        start = 1
        one_block = true
        @inbounds for j in 1:K
            if j > 1
                ratio = -low[j]
                if ratio == 0.0 || ratio_prod * ratio < 1e-150
                    ratio_prod = 1.0
                    start = j
                    one_block = false
                else
                    ratio_prod *= ratio
                end
            end
            running[j] = ratio_prod
            block_start[j] = start
        end
        @inbounds for j in 1:K
            lj = valid[j, p] ? f2 * dt[j] / running[j] : 0.0
            rj = valid[j, p] ? dt[j] * running[j] * diag_inv[j] : 0.0
            left[j, p] = one_block ? lj : 0.0
            right[j, p] = one_block ? rj : 0.0
            one_block && continue
            for i in block_start[j]:j
                li = valid[i, p] ? f2 * dt[i] / running[i] : 0.0
                term = li * rj
                acc[i, j, 1] += term
                acc[i, j, 2] += c * term
                acc[i, j, 3] += c * c * term
            end
        end
    end
    weighted = zeros(K, P)
    for m in 1:3
        for p in 1:P
            c = coord[p]
            w = !fit_pixel[p] ? 0.0 : m == 1 ? 1.0 : m == 2 ? c : c * c
            for j in 1:K
                weighted[j, p] = left[j, p] * w
            end
        end
        outer = weighted * transpose(right)  # outer[i, j] = sum_p weighted[i, p] right[j, p]
        for j in 1:K, i in 1:j
            value = acc[i, j, m] + outer[i, j]
            out_g[i, j, m] = value
            out_g[j, i, m] = value
        end
    end
    for j in 1:K
        out_gw[j, 1] = accw[j, 1]
        out_gw[j, 2] = accw[j, 2]
    end
    return nothing
end

"""
    chromatic_normal_kernel!(out_g, out_gw, e_hat, gf_hat, sqrt_d, diffs, valid, s2, dt, flux,
                             a, b, coord, active, fit_pixel)

Gauss-Newton normal equations of the chromatic model for every active group (threaded), fluxes
ready for elimination. As [`normal_equations_kernel!`](@ref) (Gauss-Newton blocks, `C_p` built
at the current point), with each pixel's omega `a[:, g] + coord[p, g] * b[:, g]`.

# Arguments
- `out_g`: `(K, K, 3, G)`; `out_g[:, :, m + 1, g] = sum_p c_p^m flux_p^2 diag(dt) C_p^-1 diag(dt)`
  (m = 0, 1, 2).
- `out_gw`: `(K, 2, G)`; `out_gw[:, m + 1, g] = sum_p c_p^m flux_p dt .* (C_p^-1 r_p)` (m = 0, 1).
- `e_hat` `(K, P, G)`, `gf_hat`, `sqrt_d` `(P, G)`: the per-pixel flux blocks of the omega part
  (the slope part is `c_p` times them), as in `normal_equations_kernel!`.
- `diffs`, `valid`: `(K, P, G)`; `s2`, `flux`, `coord`, `fit_pixel`: `(P, G)`; `dt`: `(K,)`;
  `a`, `b`: `(K, G)`; `active`: `(G,)` the groups to evaluate (the others are left as they are).

The 2K x 2K Schur complement is then `[M0 - E E', M1 - E (cE)'; ., M2 - (cE) (cE)']`, with
`E = e_hat` and `cE` its columns times `c_p`.
"""
function chromatic_normal_kernel!(out_g, out_gw, e_hat, gf_hat, sqrt_d,
        diffs::AbstractArray{<:Real, 3}, valid::AbstractArray{Bool, 3}, s2::AbstractMatrix,
        dt::AbstractVector, flux::AbstractMatrix, a::AbstractMatrix, b::AbstractMatrix,
        coord::AbstractMatrix, active::AbstractVector, fit_pixel::AbstractMatrix)
    # The threads split the active groups (every group, skipping the inactive ones, gave one
    # thread all the work where the active groups were contiguous).
    Threads.@threads for g in findall(active)
        chromatic_normal_group!(view(out_g, :, :, :, g), view(out_gw, :, :, g),
            view(e_hat, :, :, g), view(gf_hat, :, g), view(sqrt_d, :, g), view(diffs, :, :, g),
            view(valid, :, :, g), view(s2, :, g), dt, view(flux, :, g), view(a, :, g),
            view(b, :, g), view(coord, :, g), view(fit_pixel, :, g))
    end
    return nothing
end

"""
    chromatic_chi2_group!(out, diffs, valid, s2, dt, flux, a, b, coord, fit_pixel)

Eq-24 chi2 of every fitted pixel of one group at its own omega `a + coord[p] * b` (NaN for the
others); `diffs`, `valid` `(K, P)`, `out` and the per-pixel arrays `(P,)`.
"""
function chromatic_chi2_group!(out, diffs, valid, s2, dt, flux, a, b, coord, fit_pixel)
    K, P = size(diffs)
    work = zeros(K, 6)
    xv = zeros(K)
    for p in 1:P
        if !fit_pixel[p]
            out[p] = NaN
            continue
        end
        c = coord[p]
        @inbounds for k in 1:K
            xv[k] = valid[k, p] ? (a[k] + c * b[k]) * dt[k] : 0.0
        end
        out[p] = chi2_pixel(view(diffs, :, p), xv, view(valid, :, p), s2[p], flux[p], work)
    end
    return out
end

"""
    chromatic_chi2_kernel!(out, diffs, valid, s2, dt, flux, a, b, coord, fit_pixel)

Eq-24 chi2 of every fitted pixel at its own omega `a[:, g] + coord[p, g] * b[:, g]` (threaded
over groups); NaN for the pixels not fitted.

# Arguments
- `out`: `(P, G)`.
- `diffs`, `valid`: `(K, P, G)`; `s2`, `flux`, `coord`, `fit_pixel`: `(P, G)`; `dt`: `(K,)`;
  `a`, `b`: `(K, G)`.
"""
function chromatic_chi2_kernel!(out::AbstractMatrix, diffs::AbstractArray{<:Real, 3},
        valid::AbstractArray{Bool, 3}, s2::AbstractMatrix, dt::AbstractVector,
        flux::AbstractMatrix, a::AbstractMatrix, b::AbstractMatrix, coord::AbstractMatrix,
        fit_pixel::AbstractMatrix)
    Threads.@threads for g in 1:size(diffs, 3)
        chromatic_chi2_group!(view(out, :, g), view(diffs, :, :, g), view(valid, :, :, g),
            view(s2, :, g), dt, view(flux, :, g), view(a, :, g), view(b, :, g),
            view(coord, :, g), view(fit_pixel, :, g))
    end
    return out
end

"""
    chromatic_objective_change(diffs, valid, s2, dt, flux, a, b, coord, d_flux, d_a, d_b,
                               fit_pixel)

Change of one group's chi2, C frozen at the current point, over the trial step
`(d_flux, d_a, d_b)`: `sum_p (m_p' - m_p)' C_p^-1 (m_p' - m_p - 2 r_p)`, from the model change
itself so that its sign is right near convergence (as [`objective_change`](@ref)). `diffs`,
`valid` `(K, P)`, the per-pixel arrays `(P,)`, `a`, `b`, `d_a`, `d_b` `(K,)`.
"""
function chromatic_objective_change(diffs, valid, s2, dt, flux, a, b, coord, d_flux, d_a, d_b,
        fit_pixel)
    K, P = size(diffs)
    total = 0.0
    for p in 1:P
        fit_pixel[p] || continue
        f = flux[p]
        df = d_flux[p]
        c = coord[p]
        var = s2[p]
        inv_prev, ym_prev, yq_prev = 0.0, 0.0, 0.0
        @inbounds for k in 1:K
            ok = valid[k, p]
            xk = ok ? (a[k] + c * b[k]) * dt[k] : 0.0
            dxk = ok ? (d_a[k] + c * d_b[k]) * dt[k] : 0.0
            dm = ok ? df * xk + f * dxk + df * dxk : 0.0
            q = ok ? dm - 2.0 * (diffs[k, p] - f * xk) : 0.0
            alpha = ok ? max(f * xk, 0.0) + 2.0 * var : 1.0
            beta = ok && k > 1 && valid[k - 1, p] ? -var : 0.0
            lk = beta * inv_prev
            inv_k = 1.0 / (alpha - lk * beta)
            ym = dm - lk * ym_prev
            yq = q - lk * yq_prev
            total += ym * yq * inv_k
            inv_prev, ym_prev, yq_prev = inv_k, ym, yq
        end
    end
    return total
end

"""
    chromatic_objective_change_kernel!(out, diffs, valid, s2, dt, flux, a, b, coord, d_flux,
                                       d_a, d_b, active, fit_pixel)

Change of each active group's chi2, C frozen at the current point, over a trial step (threaded;
see [`chromatic_objective_change`](@ref)); 0 for the other groups.

# Arguments
- `out`: `(G,)`.
- `diffs`, `valid`: `(K, P, G)`; `s2`, `flux`, `coord`, `d_flux`, `fit_pixel`: `(P, G)`;
  `dt`: `(K,)`; `a`, `b`, `d_a`, `d_b`: `(K, G)`; `active`: `(G,)`.
"""
function chromatic_objective_change_kernel!(out::AbstractVector,
        diffs::AbstractArray{<:Real, 3}, valid::AbstractArray{Bool, 3}, s2::AbstractMatrix,
        dt::AbstractVector, flux::AbstractMatrix, a::AbstractMatrix, b::AbstractMatrix,
        coord::AbstractMatrix, d_flux::AbstractMatrix, d_a::AbstractMatrix, d_b::AbstractMatrix,
        active::AbstractVector, fit_pixel::AbstractMatrix)
    fill!(out, 0.0)
    Threads.@threads for g in findall(active)  # the threads split the active groups
        out[g] = chromatic_objective_change(view(diffs, :, :, g), view(valid, :, :, g),
            view(s2, :, g), dt, view(flux, :, g), view(a, :, g), view(b, :, g),
            view(coord, :, g), view(d_flux, :, g), view(d_a, :, g), view(d_b, :, g),
            view(fit_pixel, :, g))
    end
    return out
end

"Buffers of one group's chromatic normal equations, reused across iterations."
struct ChromaticEquations
    g::Array{Float64, 3}     # (K, K, 3) the three moments of the omega block
    gw::Matrix{Float64}      # (K, 2) the two moments of the omega gradient
    e_hat::Matrix{Float64}   # (K, P)
    gf_hat::Vector{Float64}  # (P,)
    sqrt_d::Vector{Float64}  # (P,)
end

ChromaticEquations(K, P) = ChromaticEquations(zeros(K, K, 3), zeros(K, 2), zeros(K, P),
    zeros(P), zeros(P))

chromatic_evaluate!(ne::ChromaticEquations, diffs, valid, s2, dt, flux, a, b, coord,
    fit_pixel) =
    chromatic_normal_group!(ne.g, ne.gw, ne.e_hat, ne.gf_hat, ne.sqrt_d, diffs, valid, s2, dt,
        flux, a, b, coord, fit_pixel)

"""
    chromatic_schur(ne, coord, free)

The 2K x 2K Schur complement and right-hand side of one group, `(a, b)` stacked; the pinned
parameters (`.!free`, `(2K,)`) get an identity row and column and a zero right-hand side.
"""
function chromatic_schur(ne::ChromaticEquations, coord, free)
    K = size(ne.e_hat, 1)
    e = ne.e_hat
    ce = e .* transpose(coord)  # each pixel's column times its coordinate
    n = 2 * K
    sch = zeros(n, n)
    sch[1:K, 1:K] = view(ne.g, :, :, 1) - e * transpose(e)
    upper = view(ne.g, :, :, 2) - e * transpose(ce)
    sch[1:K, (K + 1):n] = upper
    sch[(K + 1):n, 1:K] = transpose(upper)
    sch[(K + 1):n, (K + 1):n] = view(ne.g, :, :, 3) - ce * transpose(ce)
    rhs = vcat(view(ne.gw, :, 1) - e * ne.gf_hat, view(ne.gw, :, 2) - ce * ne.gf_hat)
    for j in 1:n, i in 1:n
        (free[i] && free[j]) || (sch[i, j] = 0.0)
    end
    for k in 1:n
        if !free[k]
            sch[k, k] = 1.0
            rhs[k] = 0.0
        end
    end
    return sch, rhs
end

"Flux update `(g_f - E' (d_a + c d_b)) / D` of one group from the `(a, b)` update."
function chromatic_flux_step(ne::ChromaticEquations, coord, d_a, d_b)
    ea = transpose(ne.e_hat) * d_a
    eb = transpose(ne.e_hat) * d_b
    return [ne.sqrt_d[p] > 0 ? (ne.gf_hat[p] - ea[p] - coord[p] * eb[p]) / ne.sqrt_d[p] : 0.0
            for p in eachindex(ne.sqrt_d)]
end

"""
Inverse of a square matrix by an LU solve against the identity (what NumPy's `inv` does, LAPACK
`getrf` + `getrs`); NaN where it is singular or not finite.
"""
function chromatic_inverse(m)
    n = size(m, 1)
    all(isfinite, m) || return fill(NaN, n, n)
    factors = lu(m; check = false)
    issuccess(factors) || return fill(NaN, n, n)
    eye = zeros(n, n)
    for k in 1:n
        eye[k, k] = 1.0
    end
    return factors \ eye
end

"""
    fit_chromatic_groups(diffs, valid, s2, dt, fit_pixel, coord, omega, flux, ref_index;
                         rtol = 1e-8, max_iter = 50)

Gauss-Newton fit of the chromatic model from an achromatic solution, per group (threaded over
groups), in electrons; the twin of NumPy's `fit_chromatic_groups`.

The start is the achromatic solution, `b = 0`. The parameters `a` are free where the element has
data, except the reference; the slope `b` of an element is free where `a` is and the fitted
pixels that see the element span more than one coordinate, and the reference element's pixels
too (otherwise every slope is pinned at 0: one coordinate cannot tell `a` from `b`). Every step
is line-searched: the largest of 1, 1/2, ... (`CHROMATIC_MAX_HALVINGS` halvings, else 0) that
does not increase the chi2 with the covariances frozen at the current point. A group has
converged (after at least `CHROMATIC_MIN_ITER` iterations, with a step the line search accepted)
when every parameter step is below `rtol` and every flux step below `rtol` times each pixel's
`max(|flux|, sqrt(s2))` at the start. The covariance is evaluated at the solution.

# Arguments
- `diffs`, `valid`: `(K, P, G)` differences (e-) and the differences to use.
- `s2`: `(P, G)` single-read variance (e-^2); `dt`: `(K,)` read intervals.
- `fit_pixel`: `(P, G)` the pixels that take part.
- `coord`: `(P, G)` normalised wavelength coordinate of each pixel.
- `omega`, `flux`: `(K, G)`, `(P, G)` the achromatic solution (the start),
  `omega[ref_index[g], g] == 1`; NaN where there is no data.
- `ref_index`: `(G,)` the reference element, 1-based.

# Keyword Arguments
- `rtol`, `max_iter`: convergence, as above.

# Returns
A NamedTuple `(omega, slope (K, G), cov (2K, 2K, G), free (2K, G), flux, flux_var, chi2 (P, G),
n_iter, converged, stop_reason (G,))`: `a` and `b` (NaN where there is no data; `b[ref] = 0`),
the covariance of `(a, b)` stacked (pinned rows and columns 0), the free parameters, the fluxes,
their marginal variances and each pixel's eq-24 chi2 (NaN for pixels not fitted), and the
convergence report (`stop_reason` a `STOP_*` code, 0-based as pyapred's `StopReason`).
"""
function fit_chromatic_groups(diffs::AbstractArray{<:Real, 3}, valid::AbstractArray{Bool, 3},
        s2::AbstractMatrix, dt::AbstractVector, fit_pixel::AbstractMatrix,
        coord::AbstractMatrix, omega::AbstractMatrix, flux::AbstractMatrix,
        ref_index::AbstractVector; rtol::Real = 1e-8, max_iter::Integer = 50)
    K, P, G = size(diffs)
    n = 2 * K
    tol = Float64(rtol)
    coord0 = [fit_pixel[p, g] ? Float64(coord[p, g]) : 0.0 for p in 1:P, g in 1:G]
    # Bool arrays, not BitArrays: threads write neighbouring elements.
    has_data = zeros(Bool, K, G)
    for g in 1:G, k in 1:K
        seen = false
        for p in 1:P
            seen |= valid[k, p, g] && fit_pixel[p, g]
        end
        has_data[k, g] = isfinite(omega[k, g]) && seen
    end
    nonempty = [any(view(fit_pixel, :, g)) for g in 1:G]
    kstar = collect(Int, ref_index)
    free = zeros(Bool, n, G)
    for g in 1:G
        # The slope of an element is free where the pixels that see it span more than one
        # coordinate; otherwise it is pinned at 0.
        spread = zeros(Bool, K)
        if nonempty[g]
            for k in 1:K
                lo, hi = Inf, -Inf
                for p in 1:P
                    if valid[k, p, g] && fit_pixel[p, g]
                        lo = min(lo, coord0[p, g])
                        hi = max(hi, coord0[p, g])
                    end
                end
                spread[k] = hi > lo
            end
        end
        for k in 1:K
            free_a = has_data[k, g] && k != kstar[g]
            free[k, g] = free_a
            free[K + k, g] = free_a && spread[k] && spread[kstar[g]]
        end
    end
    omega_out, slope_out = fill(NaN, K, G), fill(NaN, K, G)
    cov_out = zeros(n, n, G)
    flux_out, flux_var, chi2 = fill(NaN, P, G), fill(NaN, P, G), fill(NaN, P, G)
    n_iter, converged, stop_reason = zeros(Int, G), zeros(Bool, G), zeros(Int, G)
    Threads.@threads for g in 1:G
        d, v = view(diffs, :, :, g), view(valid, :, :, g)
        s2g, fit, c = view(s2, :, g), view(fit_pixel, :, g), view(coord0, :, g)
        fr = view(free, :, g)
        data = view(has_data, :, g)
        a = [data[k] ? Float64(omega[k, g]) : 0.0 for k in 1:K]
        b = zeros(K)
        f = [fit[p] ? Float64(flux[p, g]) : 0.0 for p in 1:P]
        # Flux steps are judged against each pixel's flux or read noise (as in fit_omega_groups).
        scale = [max(abs(f[p]), sqrt(s2g[p])) for p in 1:P]
        ne = ChromaticEquations(K, P)
        stop_reason[g] = nonempty[g] ? STOP_MAX_ITER : STOP_EMPTY
        for it in 1:(nonempty[g] ? max_iter : 0)
            chromatic_evaluate!(ne, d, v, s2g, dt, f, a, b, c, fit)
            sch, rhs = chromatic_schur(ne, c, fr)
            full_step = solve_spd(sch, rhs)
            # A broken-down system stops this group at its last iterate (not converged).
            if !all(isfinite, full_step)
                stop_reason[g] = STOP_BREAKDOWN
                break
            end
            d_a, d_b = full_step[1:K], full_step[(K + 1):n]
            d_f = [fit[p] ? s : 0.0 for (p, s) in enumerate(chromatic_flux_step(ne, c, d_a, d_b))]
            # Line search: halve the step until the chi2 (C frozen here) does not increase; not
            # for a step already below the tolerance (its objective change is at the rounding
            # level).
            full = maximum(abs, full_step; init = 0.0)
            for p in 1:P
                fit[p] && (full = max(full, abs(d_f[p]) / scale[p]))
            end
            lam = 1.0
            accepted = !(full >= tol)
            for _ in 1:(accepted ? 0 : CHROMATIC_MAX_HALVINGS)
                change = chromatic_objective_change(d, v, s2g, dt, f, a, b, c, lam .* d_f,
                    lam .* d_a, lam .* d_b, fit)
                if !(change > 0.0)
                    accepted = true
                    break
                end
                lam *= 0.5
            end
            accepted || (lam = 0.0)
            a .+= lam .* d_a
            b .+= lam .* d_b
            f .+= lam .* d_f
            n_iter[g] = it
            size_omega = 0.0
            for l in 1:n
                size_omega = max(size_omega, abs(lam * full_step[l]))
            end
            size_flux = 0.0
            for p in 1:P
                fit[p] || continue
                size_flux = max(size_flux, abs(lam * d_f[p]) / scale[p])
            end
            # A step the line search rejected entirely (lam = 0) is no sign of convergence.
            if size_omega < tol && size_flux < tol && it >= CHROMATIC_MIN_ITER && lam > 0.0
                converged[g] = true
                stop_reason[g] = STOP_CONVERGED
                break
            end
            if lam == 0.0
                stop_reason[g] = STOP_LINE_SEARCH
                break
            end
        end
        # The covariance at the solution (an empty group's system is the identity, all pinned).
        nonempty[g] && chromatic_evaluate!(ne, d, v, s2g, dt, f, a, b, c, fit)
        sch, _ = chromatic_schur(ne, c, fr)
        cov_g = chromatic_inverse(sch)
        for j in 1:n, i in 1:n
            (fr[i] && fr[j]) || (cov_g[i, j] = 0.0)
        end
        cov_out[:, :, g] = cov_g
        for p in 1:P
            fit[p] || continue
            e = view(ne.e_hat, :, p)
            e_full = vcat(e, c[p] .* e)
            quad = dot(transpose(cov_g) * e_full, e_full)
            flux_var[p, g] = (1.0 + quad) / ne.sqrt_d[p]^2
            flux_out[p, g] = f[p]
        end
        chromatic_chi2_group!(view(chi2, :, g), d, v, s2g, dt, f, a, b, c, fit)
        for k in 1:K
            omega_out[k, g] = data[k] && nonempty[g] ? a[k] : NaN
            slope_out[k, g] = data[k] ? b[k] : NaN
        end
        # Nothing fails silently: a group whose results are not all finite has not converged.
        if nonempty[g]
            finite = all(isfinite, cov_g)
            for k in 1:K
                finite &= !data[k] || (isfinite(a[k]) && isfinite(b[k]))
            end
            for p in 1:P
                fit[p] || continue
                finite &= isfinite(f[p]) && isfinite(flux_var[p, g]) && isfinite(chi2[p, g])
            end
            if !finite
                converged[g] && (stop_reason[g] = STOP_BREAKDOWN)
                converged[g] = false
            end
        end
    end
    return (; omega = omega_out, slope = slope_out, cov = cov_out, free, flux = flux_out,
        flux_var, chi2, n_iter, converged, stop_reason)
end

"NumPy's `nan_to_num`: NaN as 0, an infinity as the largest finite Float64 of its sign."
nan_to_num(x) = isnan(x) ? 0.0 : isinf(x) ? (x > 0 ? 1.7976931348623157e308 :
                                              -1.7976931348623157e308) : Float64(x)

"""
    check_start_chi2(chi2, omega, flux, diffs, valid, s2, dt, fit_pixel, single)

Throw an `ArgumentError` unless `chi2` `(P, G)` is the chi2 of `omega` `(K, G)` and `flux`
`(P, G)` (e-) on these differences, as pyapred's `_check_start_chi2`: the chromatic test
compares the chromatic chi2 with the start's, and a start fitted with another gain gave
p = 1e-20 on achromatic data.
"""
function check_start_chi2(chi2, omega, flux, diffs, valid, s2, dt, fit_pixel, single)
    K, P, G = size(diffs)
    x = [isfinite(omega[k, g]) ? omega[k, g] * dt[k] : 0.0 for k in 1:K, g in 1:G]
    flux_fit = [fit_pixel[p, g] ? Float64(flux[p, g]) : 0.0 for p in 1:P, g in 1:G]
    again = chi2_kernel!(zeros(P, G), diffs, valid, s2, x, flux_fit, fit_pixel)
    for g in 1:G, p in 1:P
        stated = Float64(chi2[p, g])
        # Its own fit computes it in another order: rounding apart, the same.
        (fit_pixel[p, g] && isfinite(stated) &&
         !(abs(again[p, g] - stated) <= 1e-6 * max(abs(stated), 1.0))) || continue
        at = single ? (p,) : (p, g)
        throw(ArgumentError("start: expected fit_omega's result on these reads, read noise, " *
                            "gain, mask and read times (without segments): at pixel $at its " *
                            "chi2 is $stated, its omega and flux give $(again[p, g]) here"))
    end
    return nothing
end

"""
    fit_omega_chromatic(reads, read_noise, coordinate; start = nothing, gain = 1.0,
                        mask = nothing, read_times = nothing, saturation = nothing,
                        ref_index = nothing, rtol = 1e-8, max_iter = 50, jump_search = false,
                        jump_threshold = 4.5)

Joint fit of a chromatic omega and the fluxes, tested against the achromatic fit (pyapred's
`fit_omega_chromatic`). Model: read difference k of pixel p is
`f_p omega_k (1 + gamma_k c_p) dt_k`, with `c_p` the pixel's normalised wavelength coordinate,
`omega[ref_index] = 1` and `gamma[ref_index] = 0`. It is linear in `(omega, omega * gamma)`, so
the fluxes are eliminated by the Schur complement as in [`fit_omega`](@ref) and the dense system
is `2(K-1) x 2(K-1)` ([`fit_chromatic_groups`](@ref)). The iteration starts from the achromatic
solution, on the same differences (its jump mask).

# Arguments
- `reads`: `(n_pix, n_reads)` one group, or `(n_pix, n_groups, n_reads)`, as in `fit_omega`.
- `read_noise`: single-read sigma in the units of `reads`, scalar or of the pixel shape.
- `coordinate`: each pixel's normalised wavelength coordinate (about -1 .. 1 over the fitted
  wavelength range), scalar, of the pixel shape, or one per pixel of a group for all groups.

# Keyword Arguments
- `start`: the [`fit_omega`](@ref) result of the same pixels with the same inputs: the starting
  point, its reference read, its jump mask and the null model of the test. Default: computed
  here with `fit_omega` (`ref_index`, `jump_search`, `jump_threshold`).
- `gain`, `mask`, `read_times`, `saturation`: as in `fit_omega`.
- `ref_index`, `jump_search`, `jump_threshold`: passed to `fit_omega` when `start` is not given
  (`ref_index` 1-based).
- `rtol`, `max_iter`: convergence of the chromatic iteration.

# Returns
A NamedTuple with the fields of pyapred's `ChromaticFit`: `omega`, `gamma` `(K, G)`,
`cov (2K, 2K, G)` of `(omega, gamma)` stacked (fixed rows and columns 0), `ref_index (G,)`
(1-based), `flux`, `flux_var`, `chi2`, `n_diff`, `flags` `(n_pix, G)`, `group_flags`, `n_iter`,
`converged`, `stop_reason`, `delta_chi2` (achromatic minus chromatic chi2 over the fitted
pixels), `dof` (the free elements of gamma), `p_value` (chi2 survival of
`delta_chi2 / inflation^2` with `dof` degrees of freedom), `amplitude` (the equivalent chromatic
amplitude `sqrt(12 (var(2 gamma) - mean(sigma_2gamma^2)))` over the free elements and the
reference) and `inflation` `(G,)`; the group axis is dropped for a single group. Fluxes are in
the units of `reads` per read interval.
"""
function fit_omega_chromatic(reads::AbstractArray, read_noise, coordinate; start = nothing,
        gain = 1.0, mask = nothing, read_times = nothing, saturation = nothing,
        ref_index = nothing, rtol = 1e-8, max_iter = 50,
        jump_search = false, jump_threshold = 4.5)
    rtol = positive_option(rtol, "rtol")
    max_iter = count_option(max_iter, "max_iter", 1)
    jump_search = flag_option(jump_search, "jump_search")
    if start === nothing
        start = fit_omega(reads, read_noise; gain, mask, read_times, saturation, ref_index,
            jump_search, jump_threshold)
    elseif !(start isa NamedTuple && all(f -> hasproperty(start, f),
                                          (:omega, :flux, :flags, :ref_index, :chi2)))
        # As pyapred's TypeError: a fit_omega result, not another function's result.
        throw(ArgumentError("start: expected a fit_omega result, got $(typeof(start))"))
    end
    single, diffs, valid, flags, s2, dt, gain_map = group_inputs(reads, read_noise, gain, mask,
        read_times, saturation)
    K, P, G = size(diffs)
    shape_in = size(reads)[1:(end - 1)]
    # Broadcasting aligns the leading axes: each of coordinate's must be 1 or the pixels'.
    csize = size(coordinate)
    length(csize) <= length(shape_in) &&
        all(d -> csize[d] == 1 || csize[d] == shape_in[d], 1:length(csize)) ||
        throw(ArgumentError("coordinate: expected a shape broadcastable to $shape_in, got " *
                            "$csize"))
    coord = reshape(pixel_map(coordinate, shape_in, "coordinate"; positive = false), P, G)
    all(isfinite, coord) || throw(ArgumentError("coordinate: expected finite values"))
    # The start's arrays with the group axis (absent in a single group's fit_omega result).
    grouped(value) = !single ? value :
                     value isa AbstractArray ? reshape(value, size(value)..., 1) : fill(value, 1)
    s_omega, s_flux = grouped(start.omega), grouped(start.flux)
    if size(s_omega) != (K, G) || size(s_flux) != (P, G)
        throw(ArgumentError("start: expected a fit_omega result of the same pixels, omega " *
                            "$((K, G)) and flux $((P, G)), got $(size(s_omega)) and " *
                            "$(size(s_flux))"))
    end
    if hasproperty(start, :jump_mask) && start.jump_mask !== nothing
        valid = Array{Bool}(valid .& .!grouped(start.jump_mask))
    end
    s_flags = grouped(start.flags)
    fit = [(s_flags[p, g] & NOT_IN_OMEGA_FIT) == 0 && count(view(valid, :, p, g)) >= 2
           for p in 1:P, g in 1:G]
    kstar = vec(grouped(start.ref_index))
    length(kstar) == G && all(k -> isinteger(k) && 1 <= k <= K, kstar) ||
        throw(ArgumentError("start: expected a ref_index of 1 to $K per group, got " *
                            "$(repr(start.ref_index))"))
    kstar = Int.(kstar)
    check_start_chi2(grouped(start.chi2), s_omega, s_flux .* gain_map, diffs, valid, s2, dt, fit,
        single)
    res = fit_chromatic_groups(diffs, valid, s2, dt, fit, coord, s_omega, s_flux .* gain_map,
        kstar; rtol, max_iter)
    n_diff = dropdims(sum(valid; dims = 1); dims = 1)
    s_chi2 = grouped(start.chi2)
    # An omega element with no data (NaN) or fitted to exactly 0 leaves its gamma undefined
    # (slope / 0 was +-inf, with no flag): NaN, and the group flagged below.
    undetermined = .!isfinite.(res.omega) .| (res.omega .== 0)
    gamma = ifelse.(undetermined, NaN, res.slope ./ res.omega)
    cov_out = zeros(2 * K, 2 * K, G)
    delta_chi2, p_value, amplitude = fill(NaN, G), fill(NaN, G), fill(NaN, G)
    inflation = zeros(G)
    dof = zeros(Int, G)
    group_flags = zeros(Int, G)
    # A group with nothing to fit is EMPTY_GROUP with its omega elements NaN, not unconverged:
    # `fit_omega`'s flags for it.
    converged = [res.converged[g] || !any(view(fit, :, g)) for g in 1:G]
    stop_reason = copy(res.stop_reason)
    for g in 1:G
        nonempty = any(view(fit, :, g))
        # (omega, gamma) = (a, b / a): the covariance of (a, b) by the Jacobian of that map.
        jac = zeros(2 * K, 2 * K)
        for k in 1:K
            jac[k, k] = 1.0
            jac[K + k, k] = nan_to_num(-res.slope[k, g] / res.omega[k, g]^2)
            jac[K + k, K + k] = nan_to_num(1.0 / res.omega[k, g])
        end
        cov_g = (jac * view(res.cov, :, :, g)) * transpose(jac)
        cov_out[:, :, g] = cov_g
        dof_pix = sum(fit[p, g] ? n_diff[p, g] - 1 : 0 for p in 1:P)
        # omega and gamma are fitted jointly over all the pixels: they take degrees of freedom
        # too, which a group of 20-50 pixels does not make negligible.
        resid_dof = dof_pix - count(view(res.free, :, g))
        chi2_sum = sum(x for x in view(res.chi2, :, g) if !isnan(x); init = 0.0)
        inflation[g] = resid_dof > 0 ? sqrt(chi2_sum / resid_dof) : NaN
        achromatic = sum(fit[p, g] ? s_chi2[p, g] : 0.0 for p in 1:P)
        chromatic = sum(fit[p, g] ? res.chi2[p, g] : 0.0 for p in 1:P)
        delta = achromatic - chromatic
        dof[g] = count(view(res.free, (K + 1):(2 * K), g))
        # No evidence: no chi2 decrease; a decrease where the achromatic fit already matches the
        # data to rounding (noise-free data: both chi2 are rounding, their ratio meaningless);
        # no degrees of freedom left to measure the noise with.
        no_evidence = delta <= 0 || achromatic <= 1e-10 * dof_pix || resid_dof <= 0
        statistic = no_evidence ? 0.0 : delta / inflation[g]^2
        # One with no degrees of freedom left (fewer differences than fluxes, omega and gamma
        # elements) fits its data exactly whatever they are: degenerate.
        if nonempty && resid_dof <= 0
            converged[g] && (stop_reason[g] = STOP_BREAKDOWN)
            converged[g] = false
        end
        p_g = dof[g] > 0 ? chi2_sf(statistic, max(dof[g], 1)) : 1.0
        # The equivalent amplitude over the free elements of gamma and the reference (NumPy's
        # nanvar and nanmean: NaN elements left out).
        use = [res.free[K + k, g] || k == kstar[g] for k in 1:K]
        total, n_used = 0.0, 0
        for k in 1:K
            x = use[k] ? 2.0 * gamma[k, g] : NaN
            isnan(x) && continue
            total += x
            n_used += 1
        end
        mean_doubled = total / n_used
        squares = 0.0
        for k in 1:K
            x = use[k] ? 2.0 * gamma[k, g] : NaN
            isnan(x) || (squares += (x - mean_doubled) * (x - mean_doubled))
        end
        var_doubled = squares / n_used
        total_err, n_err = 0.0, 0
        for k in 1:K
            x = use[k] ? 2.0 * sqrt(max(cov_g[K + k, K + k], 0.0)) : NaN
            isnan(x) && continue
            total_err += x * x
            n_err += 1
        end
        excess = var_doubled - total_err / n_err
        if nonempty
            delta_chi2[g] = delta
            p_value[g] = p_g
            amplitude[g] = sqrt(12.0 * max(excess, 0.0))
        end
        converged[g] || (group_flags[g] |= NOT_CONVERGED)
        any(view(undetermined, :, g)) && (group_flags[g] |= OMEGA_ELEMENT_NO_DATA)
        nonempty || (group_flags[g] |= EMPTY_GROUP)
    end
    out = (; omega = res.omega, gamma, cov = cov_out, ref_index = kstar,
        flux = res.flux ./ gain_map, flux_var = res.flux_var ./ gain_map .^ 2, chi2 = res.chi2,
        n_diff, flags = flags .| s_flags, group_flags, n_iter = res.n_iter,
        converged, stop_reason, delta_chi2, dof, p_value,
        amplitude, inflation)
    single || return out
    return map(drop_group_axis, out)
end
