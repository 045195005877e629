# Time-variable model: joint Gauss-Newton fit of omega and the fluxes with the fluxes eliminated by
# a Schur complement, its initial guess, and the Gibbs sampler. Twins of `prepare_diffs_kernel`,
# `normal_equations_kernel`, `chi2_kernel`, `initial_guess`, `gauss_newton_step`,
# `fit_omega_groups` and `gibbs` in `pyapred/solver/_numpy.py`, and of the public `fit_omega`,
# `initial_guess` and `sample_omega` in `pyapred/solver/api.py`.
#
# Layout: `diffs` and `valid` are `(K, P, G)` (K differences of P pixels in G groups; the C-order
# NumPy `(G, P, K)` seen from Julia), per-pixel arrays `(P, G)`, omega `(K, G)`.

"""
    prepare_diffs_kernel!(diffs, valid, flags, reads, bad, use_mask, gain, saturation)

Gather the read differences of a `(P, G, n_reads)` cube into `(K, P, G)` layout, in electrons.
`valid[k, p, g]` is false for differences touching a bad read; there `diffs` is 0. `flags` `(P, G)`
receives the read flags.
"""
function prepare_diffs_kernel!(diffs::AbstractArray{<:Real, 3}, valid::AbstractArray{Bool, 3},
        flags::AbstractMatrix, reads::AbstractArray{<:Real, 3}, bad::AbstractArray,
        use_mask::Bool, gain::AbstractMatrix, saturation::AbstractMatrix)
    P, G, N = size(reads)
    K = N - 1
    Threads.@threads for g in 1:G
        ramp = zeros(N)
        ramp_bad = falses(N)
        valid_read = Vector{Bool}(undef, N)
        for p in 1:P
            @inbounds for j in 1:N
                ramp[j] = reads[p, g, j]
                use_mask && (ramp_bad[j] = bad[p, g, j])
            end
            flags[p, g] = valid_reads!(valid_read, ramp, ramp_bad, use_mask, saturation[p, g])
            @inbounds for k in 1:K
                ok = valid_read[k] && valid_read[k + 1]
                valid[k, p, g] = ok
                diffs[k, p, g] = ok ? (ramp[k + 1] - ramp[k]) * gain[p, g] : 0.0
            end
        end
    end
    return nothing
end

"""
    pixel_sweep!(alpha, beta, piv, low, x, r, yx, yr, diffs, valid, omega, dt, s2, flux, p)

The start of every per-pixel sum of the omega fit, for pixel `p` of a group at `(flux, omega)`:
the design `x = omega .* dt` and the residual `r = diffs[:, p] - flux x` at the `valid`
differences (0 elsewhere), the L D L' factors of its C ([`factor!`](@ref)), and `yx = L^-1 x`,
`yr = L^-1 r`. Returns `(x' C^-1 x, x' C^-1 r)`.

# Arguments
- `alpha`, `beta`, `piv`, `low`, `x`, `r`, `yx`, `yr`: `(K,)` work arrays, filled.
- `diffs`: `(K, P)`; `valid`: `(K,)`, the pixel's column; `omega`, `dt`: `(K,)`.
- `s2`, `flux`: the pixel's read-noise variance and flux (electrons).
"""
@inline function pixel_sweep!(alpha, beta, piv, low, x, r, yx, yr, diffs, valid, omega, dt, s2,
        flux, p)
    K = length(x)
    @inbounds for k in 1:K
        x[k] = valid[k] ? omega[k] * dt[k] : 0.0
        r[k] = valid[k] ? diffs[k, p] - flux * x[k] : 0.0
    end
    factor!(alpha, beta, piv, low, x, valid, s2, flux)
    forward!(yx, low, x)
    forward!(yr, low, r)
    dd = 0.0
    gf = 0.0
    @inbounds for k in 1:K
        dd += yx[k] * yx[k] / piv[k]
        gf += yx[k] * yr[k] / piv[k]
    end
    return dd, gf
end

"""
    normal_equations_group!(out_g, out_gw, e_hat, gf_hat, sqrt_d, diffs, valid, s2, dt, flux,
                            omega, fit_pixel; newton = false)

The Gauss-Newton normal equations of one group, fluxes ready for elimination (see
[`normal_equations_kernel!`](@ref)); `diffs`, `valid` and `e_hat` are `(K, P)`. With `newton`,
`e_hat` is the flux-omega block of the exact Hessian of the chi2 with C frozen.
"""
function normal_equations_group!(out_g, out_gw, e_hat, gf_hat, sqrt_d, diffs, valid, s2, dt,
        flux, omega, fit_pixel; newton::Bool = false)
    K, P = size(diffs)
    alpha, beta, piv, low, back = zeros(K), zeros(K), zeros(K), zeros(K), zeros(K)
    x, r, yx, yr, u, col = zeros(K), zeros(K), zeros(K), zeros(K), zeros(K), zeros(K)
    acc = zeros(K, K)
    accw = zeros(K)
    for p in 1:P
        if !fit_pixel[p]
            sqrt_d[p] = 0.0
            gf_hat[p] = 0.0
            e_hat[:, p] .= 0.0
            continue
        end
        f = flux[p]
        vmask = view(valid, :, p)
        dd, gf = pixel_sweep!(alpha, beta, piv, low, x, r, yx, yr, diffs, vmask, omega, dt,
            s2[p], f, p)
        sd = sqrt(dd)
        sqrt_d[p] = sd
        gf_hat[p] = gf / sd
        backward!(u, low, piv, yx)
        backward!(col, low, piv, yr)
        @inbounds for k in 1:K
            if !vmask[k]
                e_hat[k, p] = 0.0
            elseif newton
                # The residual term of the exact Hessian: d2 m_pk / d f_p d omega_k = dt_k.
                e_hat[k, p] = (f * u[k] - col[k]) * dt[k] / sd
            else
                e_hat[k, p] = f * dt[k] * u[k] / sd
            end
        end
        @inbounds for k in 1:K
            vmask[k] && (accw[k] += f * dt[k] * col[k])
        end
        # Backward pivots, for the diagonal of C^-1; then walk each column of C^-1 up from the
        # diagonal with the pivot ratios (K^2 operations per pixel, nothing stored).
        back[K] = alpha[K]
        @inbounds for k in (K - 1):-1:1
            back[k] = alpha[k] - beta[k] * beta[k] / back[k + 1]
        end
        f2 = f * f
        @inbounds for j in 1:K
            vmask[j] || continue
            den = alpha[j]
            j > 1 && (den -= beta[j - 1] * beta[j - 1] / piv[j - 1])
            j < K && (den -= beta[j] * beta[j] / back[j + 1])
            cj = f2 * dt[j]
            value = 1.0 / den
            acc[j, j] += cj * dt[j] * value
            for i in (j - 1):-1:1
                value *= -beta[i] / piv[i]
                value == 0.0 && break
                acc[i, j] += cj * dt[i] * value
            end
        end
    end
    @inbounds for j in 1:K
        out_gw[j] = accw[j]
        for i in 1:j
            out_g[i, j] = acc[i, j]
            out_g[j, i] = acc[i, j]
        end
    end
    return nothing
end

"""
    normal_equations_kernel!(out_g, out_gw, e_hat, gf_hat, sqrt_d, diffs, valid, s2, dt, flux,
                             omega, active, newton, fit_pixel)

Gauss-Newton normal equations of the time-variable model for every active group (threaded).
For group g and fitted pixel p, with `x = omega[:, g] .* dt`, `C_p` built at `(flux, omega)`
(the linearisation point) and `r_p = d_p - flux_p x`:

- `sqrt_d[p, g] = sqrt(D_p)`, `D_p = x' C_p^-1 x` (the flux block of H, diagonal);
- `e_hat[:, p, g] = E_p / sqrt(D_p)`, `E_p = flux_p dt .* (C_p^-1 x)` (flux-omega block); where
  `newton[g]`, `E_p = dt .* (flux_p C_p^-1 x - C_p^-1 r_p)`, the flux-omega block of the exact
  Hessian of the chi2 with C frozen (the only block where it differs from Gauss-Newton's);
- `gf_hat[p, g] = (x' C_p^-1 r_p) / sqrt(D_p)` (the flux part of the gradient);
- `out_g[:, :, g] = sum_p flux_p^2 diag(dt) C_p^-1 diag(dt)` (the omega block, K x K);
- `out_gw[:, g] = sum_p flux_p dt .* (C_p^-1 r_p)` (the omega part of the gradient).

The Schur complement is then `G - e_hat e_hat'` (spec section 9.1).
"""
function normal_equations_kernel!(out_g, out_gw, e_hat, gf_hat, sqrt_d, diffs, valid, s2, dt,
        flux, omega, active, newton, fit_pixel)
    # The threads split the active groups (every group, skipping the inactive ones, gave one
    # thread all the work where the active groups were contiguous).
    Threads.@threads for g in findall(active)
        normal_equations_group!(view(out_g, :, :, g), view(out_gw, :, g), view(e_hat, :, :, g),
            view(gf_hat, :, g), view(sqrt_d, :, g), view(diffs, :, :, g), view(valid, :, :, g),
            view(s2, :, g), dt, view(flux, :, g), view(omega, :, g), view(fit_pixel, :, g);
            newton = Bool(newton[g]))
    end
    return nothing
end

"""
    offset_blocks_group!(out_a, out_m, out_b, ec_hat, diffs, valid, s2, dt, flux, omega,
                         segment, fit_pixel)

Normal-equation blocks of one group's additive offsets (one per segment and read difference, the
1/f nuisance term of `fit_omega(...; segments)`), with the fluxes eliminated. The model is
`d_p = flux_p x + c_s(p) + noise`; `diffs` must already have the current offsets removed (0 where
invalid). With `e_p = C_p^-1 x / sqrt(D_p)`, summing over the fitted pixels p of segment s:

- `out_a[:, :, s] = sum_p (C_p^-1 - e_p e_p')` (the offset block);
- `out_m[:, :, s] = sum_p flux_p (C_p^-1 - e_p e_p')`; times `Diagonal(dt)` on the right it is
  the offset-omega block;
- `out_b[:, s] = sum_p (C_p^-1 r_p - e_p gf_hat_p)` (the offset gradient);
- `ec_hat[:, p] = e_p`.

Rows and columns of invalid differences get nothing; the cost per pixel is that of
[`normal_equations_group!`](@ref).

# Arguments
- `out_a`, `out_m`: `(K, K, S)`; `out_b`: `(K, S)`; `ec_hat`, `diffs`, `valid`: `(K, P)`.
- `segment`: `(P,)` 1-based segment of each pixel.
"""
function offset_blocks_group!(out_a, out_m, out_b, ec_hat, diffs, valid, s2, dt, flux, omega,
        segment, fit_pixel)
    K, P = size(diffs)
    alpha, beta, piv, low, back = zeros(K), zeros(K), zeros(K), zeros(K), zeros(K)
    x, r, yx, yr, u, cr, e = zeros(K), zeros(K), zeros(K), zeros(K), zeros(K), zeros(K), zeros(K)
    fill!(out_a, 0.0)
    fill!(out_m, 0.0)
    fill!(out_b, 0.0)
    for p in 1:P
        if !fit_pixel[p]
            ec_hat[:, p] .= 0.0
            continue
        end
        f = flux[p]
        s = segment[p]
        vmask = view(valid, :, p)
        dd, gf = pixel_sweep!(alpha, beta, piv, low, x, r, yx, yr, diffs, vmask, omega, dt,
            s2[p], f, p)
        sd = sqrt(dd)
        gf_hat = gf / sd
        backward!(u, low, piv, yx)
        backward!(cr, low, piv, yr)
        @inbounds for k in 1:K
            e[k] = vmask[k] ? u[k] / sd : 0.0
            ec_hat[k, p] = e[k]
            vmask[k] && (out_b[k, s] += cr[k] - e[k] * gf_hat)
        end
        back[K] = alpha[K]
        @inbounds for k in (K - 1):-1:1
            back[k] = alpha[k] - beta[k] * beta[k] / back[k + 1]
        end
        # Upper triangle [i, j], i <= j: C^-1 walked up each column from its diagonal with the
        # pivot ratios (the walk stops at a decoupled difference), then the rank-one term.
        @inbounds for j in 1:K
            vmask[j] || continue
            den = alpha[j]
            j > 1 && (den -= beta[j - 1] * beta[j - 1] / piv[j - 1])
            j < K && (den -= beta[j] * beta[j] / back[j + 1])
            value = 1.0 / den
            out_a[j, j, s] += value
            out_m[j, j, s] += f * value
            for i in (j - 1):-1:1
                value *= -beta[i] / piv[i]
                value == 0.0 && break
                out_a[i, j, s] += value
                out_m[i, j, s] += f * value
            end
            for i in 1:j
                outer = e[i] * e[j]
                out_a[i, j, s] -= outer
                out_m[i, j, s] -= f * outer
            end
        end
    end
    for s in axes(out_a, 3), j in 1:K, i in 1:(j - 1)
        out_a[j, i, s] = out_a[i, j, s]
        out_m[j, i, s] = out_m[i, j, s]
    end
    return nothing
end

"""
    chi2_kernel!(out, diffs, valid, s2, x, flux, fit_pixel)

Eq-24 chi2 of every fitted pixel of a `(K, P, G)` layout (NaN for the others); `x` is `(K, G)` or
`(K, 1)`.
"""
function chi2_kernel!(out::AbstractMatrix, diffs::AbstractArray{<:Real, 3},
        valid::AbstractArray{Bool, 3}, s2::AbstractMatrix, x::AbstractMatrix,
        flux::AbstractMatrix, fit_pixel::AbstractMatrix)
    K, P, G = size(diffs)
    Threads.@threads for g in 1:G
        work = zeros(K, 6)
        xv = zeros(K)
        xg = size(x, 2) == 1 ? 1 : g
        for p in 1:P
            if !fit_pixel[p, g]
                out[p, g] = NaN
                continue
            end
            @inbounds for k in 1:K
                xv[k] = valid[k, p, g] ? x[k, xg] : 0.0
            end
            out[p, g] = chi2_pixel(view(diffs, :, p, g), xv, view(valid, :, p, g), s2[p, g],
                flux[p, g], work)
        end
    end
    return out
end

# ---------------------------------------------------------------------------------------------
# Initial guess (spec section 2.6)
# ---------------------------------------------------------------------------------------------
"""
    guess_floor(s2, reference)

The initial guess's positivity floor for a pixel's fluxes and differences (e-): the reference's
`CLAMP_FLOOR` electrons; in default mode the same wherever the read noise is at least 1 e-, and
`CLAMP_FLOOR` read-noise sigmas below it (reads in a tiny unit are not all floored to one value).
"""
guess_floor(s2, reference) = reference ? CLAMP_FLOOR : CLAMP_FLOOR * min(1.0, sqrt(s2))

"""
    initial_guess!(omega, flux, kstar, diffs, valid, s2, dt, fit_pixel; reference = false,
                   ref_index = nothing, pivot_ratio = -Inf, flux_pixel = nothing)

The five-step initial guess of omega and the fluxes, per group.

# Arguments
- `omega` `(K, G)`, `flux` `(P, G)`, `kstar` `(G,)`: outputs. omega is 1 at `kstar` (1-based) and
  NaN where no pixel has data; flux is NaN for pixels that do not take part.
- `diffs`, `valid`: `(K, P, G)` differences in e- (0 where invalid) and their usability.
- `s2`: `(P, G)` single-read noise variance, e-^2.
- `dt`: `(K,)` read intervals.
- `fit_pixel`: `(P, G)` pixels that take part.

# Keyword Arguments
- `reference`: use the reference code's per-difference error `sqrt((2 s2)^2 + d)` (quirk Q1)
  instead of the correct `sqrt(2 s2 + d)`.
- `ref_index`: `(G,)` element to fix to 1 (1-based); default the argmax of the guess, which an
  entry `< 1` also asks for.
- `pivot_ratio`: threshold pivoting (`PIVOT_RATIO`): a group's `ref_index` whose guess is below
  this fraction of the group's largest element is not fixed, the largest is (an element without
  data at `ref_index` is fixed all the same). The default, `-Inf`, always fixes `ref_index`.
- `flux_pixel`: `(P, G)` Bool, the pixels whose flux is guessed (step 5), among `fit_pixel`;
  default all of them (the others get NaN). A warm start ([`fit_omega_groups`](@ref)) needs only
  the fluxes it lacks.

A fitted pixel whose usable differences all weigh nothing in step 5 (all exactly 0, a dead
pixel) keeps its step-1 median rate times the normalisation, as NumPy's twin does.
"""
function initial_guess!(omega::AbstractMatrix, flux::AbstractMatrix, kstar::AbstractVector,
        diffs::AbstractArray{<:Real, 3}, valid::AbstractArray{Bool, 3}, s2::AbstractMatrix,
        dt::AbstractVector, fit_pixel::AbstractMatrix; reference::Bool = false,
        ref_index = nothing, pivot_ratio::Real = -Inf,
        flux_pixel::Union{Nothing, AbstractMatrix{Bool}} = nothing)
    K, P, G = size(diffs)
    Threads.@threads for g in 1:G
        f0 = zeros(P)
        buf = zeros(K)
        w_sum = zeros(K)
        num = zeros(K)
        om_sig = zeros(K)
        has_data = falses(K)
        use(k, p) = valid[k, p, g] && fit_pixel[p, g]
        read_term(p) = reference ? (2.0 * s2[p, g])^2 : 2.0 * s2[p, g]
        floor_of(p) = guess_floor(s2[p, g], reference)
        d_floor(k, p) = max(diffs[k, p, g], floor_of(p))
        # 1. Flux of each pixel: the median difference rate.
        for p in 1:P
            n = 0
            for k in 1:K
                use(k, p) || continue
                n += 1
                buf[n] = diffs[k, p, g] / dt[k]
            end
            if n == 0
                f0[p] = NaN
            else
                b = sort!(view(buf, 1:n))
                med = isodd(n) ? b[n ÷ 2 + 1] : 0.5 * (b[n ÷ 2] + b[n ÷ 2 + 1])
                f0[p] = max(med, floor_of(p))
            end
        end
        # 2-3. Per-pixel omega d / a (a = f0 dt) of error |d / (a m)| sqrt(q), m the floored
        # difference and q its variance; inverse-variance weighted mean over pixels. The weight
        # a^2 r and the weighted value a d r, r = (m / d)^2 / q, take two divisions (the
        # spec's form three and a square root; NumPy's twin, `_initial_guess_kernel`, has the
        # same arithmetic). A difference weighs where its error is positive.
        for p in 1:P, k in 1:K
            d = diffs[k, p, g]
            a = f0[p] * dt[k]
            q = read_term(p) + max(d, 0.0)
            t = d_floor(k, p) / d
            r = t * t / q
            weigh = use(k, p) && d != 0 && q > 0
            w_sum[k] += weigh ? a * a * r : 0.0
            num[k] += weigh ? a * d * r : 0.0
        end
        # An element whose usable differences all weigh nothing (all exactly 0: no light) has
        # data; its guess is the floor.
        for k in 1:K
            has_data[k] = any(p -> use(k, p), 1:P)
            omega[k, g] = !has_data[k] ? NaN :
                          w_sum[k] > 0 ? max(num[k] / w_sum[k], CLAMP_FLOOR) : CLAMP_FLOOR
            om_sig[k] = w_sum[k] > 0 ? w_sum[k]^(-0.5) : Inf
        end
        # 4. Fix the largest element (or the caller's) to 1; with `pivot_ratio`, the caller's
        # only where its guess is at least that fraction of the largest (NaN, no data: kept).
        k_best = 1
        best = -Inf
        for k in 1:K
            value = has_data[k] ? omega[k, g] : -Inf
            if value > best
                best = value
                k_best = k
            end
        end
        k_ref = k_best
        if ref_index !== nothing && ref_index[g] >= 1
            k_ref = ref_index[g]
            if omega[k_ref, g] / omega[k_best, g] < pivot_ratio
                k_ref = k_best
            end
        end
        kstar[g] = k_ref
        scale = omega[k_ref, g]
        for k in 1:K
            omega[k, g] /= scale
            om_sig[k] /= scale
        end
        # 5. Per-pixel fluxes given omega, weighted over differences.
        for p in 1:P
            if flux_pixel !== nothing && !flux_pixel[p, g]
                flux[p, g] = NaN
                continue
            end
            # fl_pix = d / c (c = omega dt) of squared error fl_pix^2 (q / m^2 + e), with
            # e = (om_sig / omega)^2: weight c^2 r and weighted value c d r, with
            # r = (m / d)^2 / (q + e m^2).
            wf = 0.0
            wf_sum = 0.0
            for k in 1:K
                om_use = has_data[k] ? omega[k, g] : 1.0
                d = diffs[k, p, g]
                c = om_use * dt[k]
                m = d_floor(k, p)
                h = read_term(p) + max(d, 0.0) + (om_sig[k] / om_use)^2 * (m * m)
                t = m / d
                r = t * t / h
                weigh = use(k, p) && w_sum[k] > 0 && d != 0 && h > 0
                wf += weigh ? c * d * r : 0.0
                wf_sum += weigh ? c * c * r : 0.0
            end
            # No weight at all (every usable difference exactly 0): 0 / 0 would be NaN, and
            # max(NaN, x) is NaN in Julia; NumPy's twin keeps the step-1 rate instead.
            flux[p, g] = !fit_pixel[p, g] ? NaN :
                         wf_sum > 0 ? max(wf / wf_sum, floor_of(p)) : f0[p] * scale
        end
    end
    return nothing
end

# ---------------------------------------------------------------------------------------------
# Gauss-Newton with the Schur complement (spec sections 2.4-2.7, 9)
# ---------------------------------------------------------------------------------------------
"Buffers of one group's normal equations, reused across iterations."
struct NormalEquations
    g::Matrix{Float64}       # (K, K) omega block
    gw::Vector{Float64}      # (K,) omega gradient
    e_hat::Matrix{Float64}   # (K, P)
    gf_hat::Vector{Float64}  # (P,)
    sqrt_d::Vector{Float64}  # (P,)
end

NormalEquations(K, P) = NormalEquations(zeros(K, K), zeros(K), zeros(K, P), zeros(P), zeros(P))

evaluate!(ne::NormalEquations, diffs, valid, s2, dt, flux, omega, fit_pixel;
    newton::Bool = false) =
    normal_equations_group!(ne.g, ne.gw, ne.e_hat, ne.gf_hat, ne.sqrt_d, diffs, valid, s2, dt,
        flux, omega, fit_pixel; newton)

"""
    chord_gradient!(ne, diffs, valid, s2, dt, flux, omega, fit_pixel)

The gradient of one group at `(flux, omega)` with the flux elimination of the last
[`evaluate!`](@ref) (a chord step of [`fit_omega_groups`](@ref)): `ne.gw = sum_p flux_p dt .*
(C_p^-1 r_p)` and `ne.gf_hat[p] = (x' C_p^-1 r_p) / ne.sqrt_d[p]` (0 where `sqrt_d` is 0), with
C_p, `x` and `r_p` at the new point; `ne.g`, `ne.e_hat` and `ne.sqrt_d` stay as they were, so that
[`schur`](@ref) gives the earlier Schur complement with the new right-hand side. O(K) a pixel,
where [`evaluate!`](@ref) is O(K^2). The twin of NumPy's `chord_gradient_kernel`.

# Arguments
- `diffs`, `valid`: `(K, P)`; `s2`, `flux`, `fit_pixel`: `(P,)`; `dt`, `omega`: `(K,)`.
"""
function chord_gradient!(ne::NormalEquations, diffs, valid, s2, dt, flux, omega, fit_pixel)
    K, P = size(diffs)
    alpha, beta, piv, low = zeros(K), zeros(K), zeros(K), zeros(K)
    x, r, yx, yr, col = zeros(K), zeros(K), zeros(K), zeros(K), zeros(K)
    fill!(ne.gw, 0.0)
    for p in 1:P
        if !fit_pixel[p]
            ne.gf_hat[p] = 0.0
            continue
        end
        f = flux[p]
        vmask = view(valid, :, p)
        _, gf = pixel_sweep!(alpha, beta, piv, low, x, r, yx, yr, diffs, vmask, omega, dt,
            s2[p], f, p)
        sd = ne.sqrt_d[p]
        ne.gf_hat[p] = sd > 0.0 ? gf / sd : 0.0
        backward!(col, low, piv, yr)
        @inbounds for k in 1:K
            vmask[k] && (ne.gw[k] += f * dt[k] * col[k])
        end
    end
    return nothing
end

"Schur complement and right-hand side, with the non-free elements pinned (identity)."
function schur(ne::NormalEquations, free)
    sch = ne.g - ne.e_hat * transpose(ne.e_hat)
    rhs = ne.gw - ne.e_hat * ne.gf_hat
    K = length(free)
    for j in 1:K, i in 1:K
        (free[i] && free[j]) || (sch[i, j] = 0.0)
    end
    for k in 1:K
        if !free[k]
            sch[k, k] = 1.0
            rhs[k] = 0.0
        end
    end
    return sch, rhs
end

"Solve the SPD system `a x = b`; a singular or non-finite system gets NaN (the caller stops)."
function solve_spd(a, b)
    all(isfinite, a) || return fill(NaN, length(b))
    factors = lu(a; check = false)
    return issuccess(factors) ? factors \ b : fill(NaN, length(b))
end

"Whether the symmetric matrix `a` is finite and positive definite (its Cholesky succeeds)."
function positive_definite(a)
    all(isfinite, a) || return false
    return issuccess(cholesky(Symmetric(a, :L); check = false))
end

"Inverse of an SPD matrix; NaN where it is singular or not finite."
function inverse_spd(a)
    all(isfinite, a) || return fill(NaN, size(a))
    factors = lu(a; check = false)
    return issuccess(factors) ? inv(factors) : fill(NaN, size(a))
end

"Flux update from the omega update: `(g_f - E d_omega) / D`."
function flux_step(ne::NormalEquations, d_omega)
    step = ne.gf_hat - transpose(ne.e_hat) * d_omega
    return [sd > 0 ? s / sd : 0.0 for (s, sd) in zip(step, ne.sqrt_d)]
end

"""
One group's additive offsets `c (K, S)`, one per (segment, difference) and shared by the pixels
of a segment (the 1/f nuisance term), eliminated from the Schur system after the fluxes.

The model `d_p = flux_p x + c_s(p)` is unchanged by `flux_p -> flux_p + a` for the pixels of
segment s with `c_s -> c_s - a x`, so the offsets are constrained to sum to zero over the
differences with data in each segment: `c = T z`, `z` free except at the last element with data
(`c_L = -sum(z)`). The twin of pyapred's `_Offsets`.
"""
struct Offsets
    segment::Vector{Int}            # (P,) 1-based; 1 for pixels that are not fitted
    has_data::Matrix{Bool}          # (K, S)
    free::Matrix{Bool}              # (K, S) free elements of z
    last::Vector{Int}               # (S,) the element that closes the sum
    transform::Array{Float64, 3}    # (K, K, S) T
    value::Matrix{Float64}          # (K, S) c
    a::Array{Float64, 3}            # (K, K, S) blocks of offset_blocks_group!
    m::Array{Float64, 3}
    b::Matrix{Float64}
    ec_hat::Matrix{Float64}         # (K, P)
    ainv::Array{Float64, 3}         # (K, K, S) (T' A T)^-1, pinned elements on the diagonal
    bm::Array{Float64, 3}           # (K, K, S) T' M Diagonal(dt), non-free omega columns zeroed
    bb::Matrix{Float64}             # (K, S) T' b
end

function Offsets(valid, fit_pixel, segment, n_segments)
    K, P = size(valid)
    S = n_segments
    seg = [fit_pixel[p] ? Int(segment[p]) : 1 for p in 1:P]
    has = zeros(Bool, K, S)
    for p in 1:P, k in 1:K
        fit_pixel[p] && valid[k, p] && (has[k, seg[p]] = true)
    end
    last = [something(findlast(view(has, :, s)), K) for s in 1:S]
    free = [has[k, s] && k != last[s] for k in 1:K, s in 1:S]
    t = zeros(K, K, S)
    for s in 1:S, k in 1:K
        if free[k, s]
            t[k, k, s] = 1.0
            t[last[s], k, s] = -1.0
        end
    end
    return Offsets(seg, has, free, last, t, zeros(K, S), zeros(K, K, S), zeros(K, K, S),
        zeros(K, S), zeros(K, P), zeros(K, K, S), zeros(K, K, S), zeros(K, S))
end

"The differences with the current offsets removed (0 where invalid), `(K, P)`."
adjusted(o::Offsets, diffs, valid) =
    [valid[k, p] ? diffs[k, p] - o.value[k, o.segment[p]] : 0.0
     for k in axes(diffs, 1), p in axes(diffs, 2)]

"Eliminate the offsets from the omega system `(sch, rhs)` in place (second Schur complement)."
function reduce_offsets!(o::Offsets, sch, rhs, free, dt)
    K, _, S = size(o.a)
    for s in 1:S
        t = view(o.transform, :, :, s)
        a = transpose(t) * view(o.a, :, :, s) * t
        for k in 1:K
            o.free[k, s] || (a[k, k] = 1.0)
        end
        bm = transpose(t) * (view(o.m, :, :, s) .* transpose(dt))
        for j in 1:K
            free[j] || (bm[:, j] .= 0.0)
        end
        o.bm[:, :, s] = bm
        o.bb[:, s] = transpose(t) * view(o.b, :, s)
        o.ainv[:, :, s] = inverse_spd(a)  # NaN where singular: the group breaks down
        w = view(o.ainv, :, :, s) * bm
        sch .-= transpose(bm) * w
        rhs .-= transpose(w) * view(o.bb, :, s)
    end
    return sch, rhs
end

"Offset update `(K, S)` from the omega update."
function offset_step(o::Offsets, d_omega)
    K, _, S = size(o.a)
    dc = zeros(K, S)
    for s in 1:S
        dz = view(o.ainv, :, :, s) * (view(o.bb, :, s) .- view(o.bm, :, :, s) * d_omega)
        dc[:, s] = view(o.transform, :, :, s) * dz
    end
    return dc
end

"""
`zeta_p' Cov zeta_p` of pixel p with omega and the offsets marginalised: with `v = T' e_p`,
`y = A^-1 v` and `h = e_hat_p - B' y`, it is `h' cov h + v' y`.
"""
function offset_flux_quad(o::Offsets, e_hat, cov, p)
    s = o.segment[p]
    e = view(o.ec_hat, :, p)
    v = [o.free[k, s] ? e[k] - e[o.last[s]] : 0.0 for k in axes(e, 1)]
    y = view(o.ainv, :, :, s) * v
    h = view(e_hat, :, p) .- transpose(view(o.bm, :, :, s)) * y
    return dot(h, cov * h) + dot(v, y)
end

"""
Normal equations at the current point, reduced to omega: `(schur, rhs)`. With `newton`, the
flux-omega block is the exact Hessian's (not with offsets).
"""
function reduced_system!(ne::NormalEquations, offsets, diffs, valid, s2, dt, flux, omega, fit,
        free; newton::Bool = false)
    fitted = offsets === nothing ? diffs : adjusted(offsets, diffs, valid)
    evaluate!(ne, fitted, valid, s2, dt, flux, omega, fit; newton)
    sch, rhs = schur(ne, free)
    offsets === nothing && return sch, rhs
    offset_blocks_group!(offsets.a, offsets.m, offsets.b, offsets.ec_hat, fitted, valid, s2, dt,
        flux, omega, offsets.segment, fit)
    return reduce_offsets!(offsets, sch, rhs, free, dt)
end

"""
    gauss_newton_step(diffs, valid, s2, dt, flux, omega, ref_index, fit_pixel)

One Schur-complement Gauss-Newton step at clamped `(flux, omega)`, for tests and conformance
vectors. Returns `(d_flux (P, G), d_omega (K, G), schur (K, K, G))`; `ref_index` is 1-based.
"""
function gauss_newton_step(diffs, valid, s2, dt, flux, omega, ref_index, fit_pixel)
    K, P, G = size(diffs)
    d_flux, d_omega, sch_all = zeros(P, G), zeros(K, G), zeros(K, K, G)
    for g in 1:G
        free = [isfinite(omega[k, g]) && k != ref_index[g] for k in 1:K]
        ne = NormalEquations(K, P)
        om = [isnan(w) ? 0.0 : w for w in view(omega, :, g)]
        evaluate!(ne, view(diffs, :, :, g), view(valid, :, :, g), view(s2, :, g), dt,
            view(flux, :, g), om, view(fit_pixel, :, g))
        sch, rhs = schur(ne, free)
        d_omega[:, g] = solve_spd(sch, rhs)
        d_flux[:, g] = flux_step(ne, view(d_omega, :, g))
        sch_all[:, :, g] = sch
    end
    return d_flux, d_omega, sch_all
end

"""
Default mode, threshold pivoting: the element fixed while iterating is at least this fraction of
the largest in magnitude. A requested `ref_index` below it in the initial guess is not fixed (the
largest is, and the solution is rescaled to `ref_index` at the end), and an iterate where an
element grows beyond its inverse is rescaled to fix that element instead.
"""
const PIVOT_RATIO = 0.5
"""
Default mode: a group whose step shrinks by less than this factor in one iteration, or whose
step had to be damped, continues with Newton steps (the exact Hessian of the frozen-C chi2).
"""
const SLOW_CONTRACTION = 0.5
"""
Default mode without segments: a Gauss-Newton group whose last step was below this (as the
tolerance measures it) takes chord steps ([`chord_gradient!`](@ref)): the gradient at the
iterate, with the Schur complement and flux elimination of its last full evaluation at the same
pivot. That system is about one step away, so the solution moves by about `CHORD_STEP * rtol`.
"""
const CHORD_STEP = 1e-5
"Halvings of the line search before it gives up."
const MAX_HALVINGS = 40
"Why a group's iteration stopped (`stop_reason`), as pyapred's `StopReason`."
const STOP_CONVERGED, STOP_MAX_ITER, STOP_BREAKDOWN, STOP_LINE_SEARCH, STOP_EMPTY = 0, 1, 2, 3, 4

"""
    objective_change(diffs, valid, s2, dt, flux, omega, d_flux, d_omega, d_offsets, segment,
                     fit_pixel)

Change of one group's chi2, with C frozen at `(flux, omega)`, over the trial step
`(d_flux, d_omega, d_offsets)`: `sum_p (m_p' - m_p)' C_p^-1 (m_p' - m_p - 2 r_p)` with
`r_p = d_p - flux_p x` (`diffs` `(K, P)` have the current offsets removed). Computed from the
model change `df x + f dx + df dx + dc` itself, so that its sign is right even for a tiny step.
`d_offsets` `(K, S)` with `segment` `(P,)` 1-based, or both `nothing`. The twin of NumPy's
`objective_change_kernel`.
"""
function objective_change(diffs, valid, s2, dt, flux, omega, d_flux, d_omega, d_offsets,
        segment, fit_pixel)
    K, P = size(diffs)
    total = 0.0
    for p in 1:P
        fit_pixel[p] || continue
        f, df, var = flux[p], d_flux[p], s2[p]
        inv_prev, ym_prev, yq_prev = 0.0, 0.0, 0.0
        @inbounds for k in 1:K
            ok = valid[k, p]
            xk = ok ? omega[k] * dt[k] : 0.0
            dxk = ok ? d_omega[k] * dt[k] : 0.0
            dc = d_offsets === nothing ? 0.0 : d_offsets[k, segment[p]]
            dm = ok ? df * xk + f * dxk + df * dxk + dc : 0.0
            q = ok ? dm - 2.0 * (diffs[k, p] - f * xk) : 0.0
            alpha = ok ? max(f * xk, 0.0) + 2.0 * var : 1.0
            beta = ok && k > 1 && valid[k - 1, p] ? -var : 0.0
            lk = beta * inv_prev
            inv = 1.0 / (alpha - lk * beta)
            ym = dm - lk * ym_prev
            yq = q - lk * yq_prev
            total += ym * yq * inv
            inv_prev, ym_prev, yq_prev = inv, ym, yq
        end
    end
    return total
end

"""
The largest of 1, 1/2, 1/4, ... (`MAX_HALVINGS` halvings) whose step does not increase the
chi2 with the covariances frozen at `(flux, omega)`; 0 where none does.
"""
function line_search(diffs, valid, s2, dt, flux, omega, d_flux, d_omega, d_offsets, segment,
        fit_pixel)
    lam = 1.0
    for _ in 0:MAX_HALVINGS
        change = objective_change(diffs, valid, s2, dt, flux, omega, lam .* d_flux,
            lam .* d_omega, d_offsets === nothing ? nothing : lam .* d_offsets, segment,
            fit_pixel)
        change <= 0.0 && return lam
        lam *= 0.5
    end
    return 0.0
end

"""
The initial guess of [`fit_omega_groups`](@ref) in default mode: fixed at `target` (1-based)
where that element's guess is at least `PIVOT_RATIO` of the group's largest (or has no data),
else at the largest. Fills `omega0`, `flux0` (the fluxes of the `flux_pixel` pixels, default
all) and `kstar`.
"""
function pivoted_guess!(omega0, flux0, kstar, diffs, valid, s2, dt, fit_pixel, target;
        flux_pixel = nothing)
    # One guess: the pivot rule is applied inside (NumPy's twin does the same).
    if target === nothing
        initial_guess!(omega0, flux0, kstar, diffs, valid, s2, dt, fit_pixel; flux_pixel)
    else
        initial_guess!(omega0, flux0, kstar, diffs, valid, s2, dt, fit_pixel;
            ref_index = target, pivot_ratio = PIVOT_RATIO, flux_pixel)
    end
    return nothing
end

"""
    fit_omega_groups(diffs, valid, s2, dt, fit_pixel; reference, rtol, max_iter, ref_index,
                     segments = nothing, start = nothing)

Gauss-Newton joint fit of omega and fluxes for G independent groups (threaded over groups), in
electrons; the twin of NumPy's `fit_omega_groups`.

`reference = true` is the reference implementation's iteration: full Gauss-Newton steps
linearised at the values clamped at `CLAMP_FLOOR` (the unclamped ones are returned and tested),
the absolute tolerance 1e-10 on both blocks, at least 3 iterations and the covariance of the
last linearisation (quirk Q3). Otherwise every omega step < `rtol` and every flux step < `rtol`
times `max(flux, sigma)`, at least 2 iterations, the covariance at the solution, and
(`docs/model.md`, "Convergence"):

- the linearisation point is the iterate itself, unclamped;
- every step is line-searched: the largest of 1, 1/2, 1/4, ... that does not increase the chi2
  with the covariances frozen at the current point ([`objective_change`](@ref));
- a group whose steps shrink by less than `SLOW_CONTRACTION` per iteration, or had to be damped,
  takes Newton steps (the residual term added to the Hessian) where that Hessian is positive
  definite, else the Gauss-Newton step (not with `segments`);
- chord steps: a Gauss-Newton group whose last step was below `CHORD_STEP` keeps the Schur
  complement and flux elimination of its last full evaluation and recomputes only the gradient
  ([`chord_gradient!`](@ref)), not with `segments`;
- threshold pivoting: the element fixed while iterating is never below `PIVOT_RATIO` of the
  largest in magnitude. A requested `ref_index` below it in the initial guess is not fixed (the
  guess's largest is); an iterate where an element grows beyond `1 / PIVOT_RATIO` is rescaled
  (omega / c, fluxes * c) to fix that element instead. At the end the solution is rescaled to
  the requested `ref_index` (the same point of the model; the covariance is evaluated there);
  without one, the element fixed at the end is returned.

`segments` (P, G), 1-based labels, optional: pixels of a group with the same label share an
additive offset per read difference ([`Offsets`](@ref)), fitted jointly; not with `reference`.

`start = (omega (K, G), flux (P, G))`, optional: a warm start (a previous solution with the same
`ref_index`), used wherever it is finite in place of the initial guess, which still decides
which elements have data.

# Returns
A NamedTuple `(omega (K, G), omega_cov (K, K, G), ref_index (G,) 1-based, flux (P, G),
flux_var (P, G), chi2 (P, G), n_iter (G,), converged (G,), has_data (K, G), stop_reason (G,),
step_size (G,), damping (G,))`, plus `offsets (K, S, G)` (NaN where a segment has no data) when
`segments` is given. `stop_reason` is a `STOP_*` code, `step_size` the last update as the
convergence test measures it and `damping` its line-search factor (NaN for empty groups).
"""
function fit_omega_groups(diffs::AbstractArray{<:Real, 3}, valid::AbstractArray{Bool, 3},
        s2::AbstractMatrix, dt::AbstractVector, fit_pixel::AbstractMatrix; reference::Bool,
        rtol::Real, max_iter::Integer, ref_index = nothing, segments = nothing,
        start = nothing)
    K, P, G = size(diffs)
    n_segments = segments === nothing ? 0 : maximum(segments)
    offsets_out = fill(NaN, K, n_segments, G)
    fitted_all = segments === nothing ? diffs : copy(diffs)
    omega0, flux0, kstar = zeros(K, G), zeros(P, G), zeros(Int, G)
    requested = ref_index === nothing ? nothing : collect(Int, ref_index)
    # A warm start needs the guess's fluxes only where it has none.
    needs_flux = start === nothing ? nothing : map(!isfinite, start[2])
    if reference
        initial_guess!(omega0, flux0, kstar, diffs, valid, s2, dt, fit_pixel; reference,
            ref_index = requested, flux_pixel = needs_flux)
    else
        pivoted_guess!(omega0, flux0, kstar, diffs, valid, s2, dt, fit_pixel, requested;
            flux_pixel = needs_flux)
    end
    if start !== nothing
        start_omega, start_flux = copy(start[1]), copy(start[2])
        for g in 1:G
            (requested === nothing || kstar[g] == requested[g]) && continue
            # The warm start is normalised at `requested`: rescale it to this group's pivot.
            c = start_omega[kstar[g], g]
            if isfinite(c) && c > 0.0
                start_omega[:, g] ./= c
                start_flux[:, g] .*= c
            else
                start_omega[:, g] .= NaN
                start_flux[:, g] .= NaN
            end
        end
        # Groups whose start was dropped above (a new pivot without a positive start value):
        # their guessed fluxes, at the pivot chosen above (the same values as guessed at once).
        dropped = [g for g in 1:G if any(p -> fit_pixel[p, g] && !isfinite(start_flux[p, g]) &&
                                              isnan(flux0[p, g]), 1:P)]
        if !isempty(dropped)
            n_dropped = length(dropped)
            omega_d, flux_d = zeros(K, n_dropped), zeros(P, n_dropped)
            kstar_d = zeros(Int, n_dropped)
            initial_guess!(omega_d, flux_d, kstar_d, diffs[:, :, dropped], valid[:, :, dropped],
                s2[:, dropped], dt, fit_pixel[:, dropped]; reference, ref_index = kstar[dropped])
            flux0[:, dropped] .= flux_d
        end
        for g in 1:G, k in 1:K
            isfinite(omega0[k, g]) && isfinite(start_omega[k, g]) &&
                (omega0[k, g] = start_omega[k, g])
        end
        for g in 1:G, p in 1:P
            fit_pixel[p, g] && isfinite(start_flux[p, g]) && (flux0[p, g] = start_flux[p, g])
        end
    end
    omega_out, omega_cov = zeros(K, G), zeros(K, K, G)
    flux_out, flux_var, chi2 = zeros(P, G), zeros(P, G), zeros(P, G)
    # Bool arrays, not BitArrays: threads write neighbouring elements.
    n_iter, converged, has_data = zeros(Int, G), zeros(Bool, G), map(isfinite, omega0)
    stop_reason, step_size, damping = zeros(Int, G), fill(NaN, G), fill(NaN, G)
    tol = reference ? 1e-10 : Float64(rtol)
    min_iter = reference ? 3 : 2
    lin_floor = reference ? CLAMP_FLOOR : -Inf
    Threads.@threads for g in 1:G
        d, v = view(diffs, :, :, g), view(valid, :, :, g)
        s2g, fit = view(s2, :, g), view(fit_pixel, :, g)
        data = view(has_data, :, g)
        free = [data[k] && k != kstar[g] for k in 1:K]
        nonempty = any(fit)
        omega_lin = [data[k] ? max(omega0[k, g], lin_floor) : 0.0 for k in 1:K]
        flux_lin = [fit[p] ? max(flux0[p, g], lin_floor) : 0.0 for p in 1:P]
        prev_omega, prev_flux = copy(omega_lin), copy(flux_lin)
        omega, flux = copy(omega_lin), copy(flux_lin)
        scale = max.(abs.(flux_lin), sqrt.(s2g))
        ne = NormalEquations(K, P)
        offsets = segments === nothing ? nothing :
                  Offsets(v, fit, view(segments, :, g), n_segments)
        offset_scale = sqrt(sum(s2g) / P)
        converged[g] = !nonempty
        stop_reason[g] = nonempty ? STOP_MAX_ITER : STOP_EMPTY
        newton = false
        last_step = Inf
        chords = !reference && offsets === nothing
        evaluated = false  # a full evaluation at the current pivot, for chord steps
        for it in 1:(nonempty ? max_iter : 0)
            if chords && evaluated && !newton && last_step < CHORD_STEP
                # A chord step: the gradient here, the system of the last full evaluation.
                chord_gradient!(ne, d, v, s2g, dt, flux_lin, omega_lin, fit)
                sch, rhs = schur(ne, free)
            else
                sch, rhs = reduced_system!(ne, offsets, d, v, s2g, dt, flux_lin, omega_lin,
                    fit, free; newton)
                if newton && !positive_definite(sch)
                    # Away from the solution the residual term can make the Hessian
                    # indefinite: this iteration takes the Gauss-Newton step.
                    sch, rhs = reduced_system!(ne, offsets, d, v, s2g, dt, flux_lin, omega_lin,
                        fit, free)
                end
                evaluated = true
            end
            d_omega = solve_spd(sch, rhs)
            d_flux = flux_step(ne, d_omega)
            d_offsets = nothing
            if offsets !== nothing
                d_offsets = offset_step(offsets, d_omega)
                for p in 1:P
                    ne.sqrt_d[p] > 0 || continue
                    term = dot(view(offsets.ec_hat, :, p),
                        view(d_offsets, :, offsets.segment[p]))
                    d_flux[p] -= term / ne.sqrt_d[p]
                end
            end
            # A broken-down system (singular, non-finite) stops this group at its last finite
            # iterate; it stays flagged as not converged.
            if !(all(isfinite, d_omega) && all(isfinite, d_flux))
                stop_reason[g] = STOP_BREAKDOWN
                break
            end
            lam = 1.0
            if !reference
                # The line search, where the full step is not already below the tolerance.
                full = 0.0
                for k in 1:K
                    free[k] && (full = max(full, abs(d_omega[k])))
                end
                for p in 1:P
                    fit[p] && (full = max(full, abs(d_flux[p]) / scale[p]))
                end
                if full >= tol
                    fitted = offsets === nothing ? d : adjusted(offsets, d, v)
                    lam = line_search(fitted, v, s2g, dt, flux_lin, omega_lin, d_flux, d_omega,
                        d_offsets, offsets === nothing ? nothing : offsets.segment, fit)
                end
            end
            step_offsets = 0.0
            if offsets !== nothing
                offsets.value .+= lam .* d_offsets
                step_offsets = maximum(abs, lam .* d_offsets) / offset_scale
            end
            new_omega = omega_lin .+ lam .* d_omega
            new_flux = [fit[p] ? flux_lin[p] + lam * d_flux[p] : 0.0 for p in 1:P]
            step_omega = 0.0
            for k in 1:K
                step_omega = max(step_omega, free[k] ? abs(new_omega[k] - prev_omega[k]) : 0.0)
            end
            step_flux = 0.0
            for p in 1:P
                step = abs(new_flux[p] - prev_flux[p])
                step_flux = max(step_flux, reference ? step : step / scale[p])
            end
            done = step_omega < tol && step_flux < tol && it >= min_iter &&
                   step_offsets < tol && lam > 0
            size_now = max(step_omega, step_flux, step_offsets)
            if !reference
                # Dynamic pivoting: where an element has grown beyond 1 / PIVOT_RATIO times the
                # fixed one, the iterate is rescaled to fix the largest (in magnitude) instead.
                k_big, big = 0, 0.0
                for k in 1:K
                    if data[k] && abs(new_omega[k]) > big
                        k_big, big = k, abs(new_omega[k])
                    end
                end
                if big > 1.0 / PIVOT_RATIO
                    c = new_omega[k_big]
                    new_omega .= [data[k] ? new_omega[k] / c : 0.0 for k in 1:K]
                    new_omega[k_big] = 1.0
                    new_flux .= [fit[p] ? new_flux[p] * c : 0.0 for p in 1:P]
                    kstar[g] = k_big
                    free .= [data[k] && k != k_big for k in 1:K]
                    scale .= max.(abs.(new_flux), sqrt.(s2g))
                    done = false
                    evaluated = false
                end
            end
            omega .= new_omega
            flux .= new_flux
            prev_omega .= new_omega
            prev_flux .= new_flux
            omega_lin .= [data[k] ? max(new_omega[k], lin_floor) : 0.0 for k in 1:K]
            flux_lin .= [fit[p] ? max(new_flux[p], lin_floor) : 0.0 for p in 1:P]
            n_iter[g] = it
            step_size[g] = size_now
            damping[g] = lam
            if !reference && offsets === nothing &&
               (lam < 1.0 || size_now > SLOW_CONTRACTION * last_step)
                newton = true
            end
            last_step = size_now
            if done
                converged[g] = true
                stop_reason[g] = STOP_CONVERGED
                break
            end
            if lam == 0.0
                stop_reason[g] = STOP_LINE_SEARCH
                break
            end
        end
        if !reference && nonempty && requested !== nothing && kstar[g] != requested[g]
            # Back to the requested normalisation (omega / c and flux * c, c = omega[requested]);
            # without one, the pivot stays: the guess's largest element, or the solution's.
            c = omega[requested[g]]
            if isfinite(c) && c != 0.0
                omega .= [data[k] ? omega[k] / c : 0.0 for k in 1:K]
                flux .= [fit[p] ? flux[p] * c : 0.0 for p in 1:P]
                omega_lin .= omega
                flux_lin .= flux
                kstar[g] = requested[g]
                free .= [data[k] && k != kstar[g] for k in 1:K]
            else  # the requested element has no light at all: no normalisation to give
                converged[g] = false
                stop_reason[g] = STOP_BREAKDOWN
            end
        end
        # The covariance at the returned solution (the reference keeps the one from the
        # linearisation before the last step, quirk Q3).
        sch, _ = !reference && nonempty ?
                 reduced_system!(ne, offsets, d, v, s2g, dt, flux_lin, omega_lin, fit, free) :
                 schur(ne, free)
        cov = inverse_spd(sch)
        for j in 1:K, i in 1:K
            (free[i] && free[j]) || (cov[i, j] = 0.0)
        end
        omega_cov[:, :, g] = cov
        for p in 1:P
            e = view(ne.e_hat, :, p)
            quad = !fit[p] ? 0.0 : offsets === nothing ? dot(e, cov * e) :
                   offset_flux_quad(offsets, ne.e_hat, cov, p)
            flux_var[p, g] = fit[p] ? (1.0 + quad) / ne.sqrt_d[p]^2 : NaN
            flux_out[p, g] = fit[p] ? flux[p] : NaN
        end
        for k in 1:K
            omega_out[k, g] = data[k] ? omega[k] : NaN
        end
        omega_out[kstar[g], g] = nonempty ? 1.0 : NaN
        if offsets !== nothing
            fitted_all[:, :, g] = adjusted(offsets, d, v)
            for s in 1:n_segments, k in 1:K
                offsets.has_data[k, s] && (offsets_out[k, s, g] = offsets.value[k, s])
            end
        end
    end
    x = [has_data[k, g] ? omega_out[k, g] * dt[k] : 0.0 for k in 1:K, g in 1:G]
    flux_fit = [fit_pixel[p, g] ? flux_out[p, g] : 0.0 for p in 1:P, g in 1:G]
    chi2_kernel!(chi2, fitted_all, valid, s2, x, flux_fit, fit_pixel)
    # Nothing fails silently: a group whose results are not all finite (a singular covariance,
    # an overflow), or whose covariance has a negative variance (a singular system inverted,
    # as segments of one pixel each give), has not converged, whatever its steps did.
    for g in 1:G
        any(view(fit_pixel, :, g)) || continue
        finite = all(isfinite, view(omega_cov, :, :, g)) &&
                 all(k -> omega_cov[k, k, g] >= 0, 1:K) &&
                 all(k -> !has_data[k, g] || isfinite(omega_out[k, g]), 1:K) &&
                 all(p -> !fit_pixel[p, g] || (isfinite(flux_out[p, g]) &&
                                               isfinite(flux_var[p, g]) && isfinite(chi2[p, g])),
                     1:P)
        if !finite
            converged[g] && (stop_reason[g] = STOP_BREAKDOWN)
            converged[g] = false
        end
    end
    out = (; omega = omega_out, omega_cov, ref_index = kstar, flux = flux_out, flux_var, chi2,
        n_iter, converged, has_data, stop_reason, step_size, damping)
    return segments === nothing ? out : merge(out, (; offsets = offsets_out))
end

# ---------------------------------------------------------------------------------------------
# Gibbs sampler (spec section 4)
# ---------------------------------------------------------------------------------------------
"""
    gibbs(diffs, valid, s2, dt, fit_pixel, omega, flux, kstar, burn_in, noise)

Gibbs sampler of one group with the exact omega conditional (spec 2.3), from the Gauss-Newton
solution `(omega (K, 1), flux (P, 1))`. Each sweep draws every flux from `N(mu_p, 1/D_p)` given
omega, rebuilds the covariances, then draws the free omega elements from
`N(omega_S + G_SS^-1 g_S, G_SS^-1)`. Raw draws are stored; the positivity clamp applies only to
the sampler state.

# Arguments
- `diffs`, `valid`: `(K, P, 1)`; `s2`, `fit_pixel`: `(P, 1)`; `kstar`: 1-based fixed element.
- `noise`: `(P + n_free, burn_in + n_samples)` standard normal draws, one column per sweep: the
  P flux draws, then the free omega elements' draws (the order NumPy's generator draws them in).

# Returns
`(omega_samples (K, n_samples), flux_samples (P, n_samples))`.
"""
function gibbs(diffs, valid, s2, dt, fit_pixel, omega, flux, kstar, burn_in, noise)
    K, P, _ = size(diffs)
    d, v = view(diffs, :, :, 1), view(valid, :, :, 1)
    s2g, fit = view(s2, :, 1), view(fit_pixel, :, 1)
    known = [isfinite(omega[k, 1]) for k in 1:K]
    idx = [k for k in 1:K if known[k] && k != kstar]
    omega_cl = [known[k] ? max(omega[k, 1], CLAMP_FLOOR) : 0.0 for k in 1:K]
    flux_cl = [fit[p] ? max(flux[p, 1], CLAMP_FLOOR) : 0.0 for p in 1:P]
    n_sweeps = size(noise, 2)
    n_samples = n_sweeps - burn_in
    out_omega, out_flux = zeros(K, n_samples), zeros(P, n_samples)
    ne = NormalEquations(K, P)
    for s in 1:n_sweeps
        evaluate!(ne, d, v, s2g, dt, flux_cl, omega_cl, fit)
        # Mean and sd written as NumPy evaluates them, for bitwise-close conformance.
        new_flux = [fit[p] ? (flux_cl[p] + ne.gf_hat[p] / ne.sqrt_d[p]) +
                             (1.0 / ne.sqrt_d[p]) * noise[p, s] : NaN for p in 1:P]
        flux_cl = [fit[p] ? max(new_flux[p], CLAMP_FLOOR) : 0.0 for p in 1:P]
        evaluate!(ne, d, v, s2g, dt, flux_cl, omega_cl, fit)
        chol = cholesky(Symmetric(ne.g[idx, idx], :L)).L
        # Mean omega_S + P^-1 g and covariance P^-1 = L^-T L^-1: draw L^-T (L^-1 g + z).
        half = chol \ ne.gw[idx]
        draw = omega_cl[idx] + transpose(chol) \ (half + noise[(P + 1):(P + length(idx)), s])
        new_omega = [known[k] ? omega_cl[k] : NaN for k in 1:K]
        new_omega[idx] = draw
        omega_cl[idx] = max.(draw, CLAMP_FLOOR)
        if s > burn_in
            out_omega[:, s - burn_in] = new_omega
            out_flux[:, s - burn_in] = new_flux
        end
    end
    return out_omega, out_flux
end

# ---------------------------------------------------------------------------------------------
# Public functions
# ---------------------------------------------------------------------------------------------
"Validate the inputs of the omega fits and build the `(K, P, G)` difference layout."
function group_inputs(reads, read_noise, gain, mask, read_times, saturation)
    check_reads(reads; min_dims = 2, max_dims = 3)
    shape_in = size(reads)[1:(end - 1)]
    N = size(reads, ndims(reads))
    P, G = shape_in[1], prod(shape_in[2:end])
    P >= 1 || throw(ArgumentError("reads: expected at least one pixel (n_pix >= 1) along the " *
                                  "first axis, got size $(size(reads))"))
    cube = reshape(reads, P, G, N)
    sigma = reshape(pixel_map(read_noise, shape_in, "read_noise"), P, G)
    gain_map = reshape(pixel_map(gain, shape_in, "gain"), P, G)
    sat = reshape(saturation_map(saturation, shape_in), P, G)
    bad, use_mask = check_mask(mask, reads)
    K = N - 1
    diffs, valid, flags = zeros(K, P, G), zeros(Bool, K, P, G), zeros(Int, P, G)
    prepare_diffs_kernel!(diffs, valid, flags, cube, use_mask ? reshape(bad, P, G, N) : bad,
        use_mask, gain_map, sat)
    s2 = (sigma .* gain_map) .^ 2
    return ndims(reads) == 2, diffs, valid, flags, s2, read_intervals(read_times, N), gain_map
end

"Pixels with at least 2 usable differences take part; flag the others."
function fit_pixels(valid, flags)
    n_diff = dropdims(sum(valid; dims = 1); dims = 1)
    fit = n_diff .>= 2
    return fit, n_diff, flags .| ifelse.(fit, 0, TOO_FEW_DIFFS | NOT_IN_OMEGA_FIT)
end

function check_mode(mode)
    mode in ("default", "reference") ||
        throw(ArgumentError("mode: expected \"default\" or \"reference\", got $(repr(mode))"))
    return mode == "reference"
end

"""
    fit_omega(reads, read_noise; gain = 1.0, mask = nothing, read_times = nothing,
              saturation = nothing, ref_index = nothing, rtol = 1e-8, max_iter = 50,
              mode = "default", segments = nothing, jump_search = false, jump_threshold = 4.5)

Joint fit of the shared transparency vector omega and per-pixel fluxes (time-variable model):
Gauss-Newton with the fluxes eliminated by a Schur complement; see [`fit_omega_groups`](@ref).

# Arguments
- `reads`: `(n_pix, n_reads)` one group of pixels sharing omega, or `(n_pix, n_groups, n_reads)`
  for many groups fitted independently. Fully masked pixels are padding and are ignored.
- `read_noise`: single-read sigma in the units of `reads`, scalar or of the pixel shape.

# Keyword Arguments
- `gain`, `mask`, `read_times`, `saturation`: as in [`extract_fluxes`](@ref).
- `ref_index`: element fixed to 1 (1-based), one for all groups or one per group; default the
  argmax of the initial guess.
- `rtol`, `max_iter`: convergence of `mode = "default"`.
- `mode`: `"reference"` reproduces the reference implementation (quirks Q1, Q3).
- `segments`: integer labels `1:n_segments`, of the pixel shape (or one per pixel of a group,
  for all groups): pixels of a group with the same label share one additive offset per read
  difference, fitted jointly (the 1/f nuisance term, see [`Offsets`](@ref)); with
  `jump_search` the search judges each difference against the model including its segment's
  fitted offset; not with `mode = "reference"`.
- `jump_search`: alternate the fit with a jump (cosmic-ray) search in the fitted pixels under the
  current omega, masking what it finds and refitting, until the jump mask is stable (at most 3
  searches, [`fit_omega_with_jumps`](@ref)); `n_diff` counts the clean differences, and `flags`
  add `JUMP_DETECTED` and `FEW_CLEAN_DIFFS`.
- `jump_threshold`: threshold of the jump search in sigma, as in [`find_jumps`](@ref).

# Returns
A NamedTuple with the fields of pyapred's `OmegaFit`: `omega (K, G)`, `omega_cov (K, K, G)`,
`ref_index (G,)`, `flux`, `flux_var`, `chi2`, `n_diff`, `flags` `(n_pix, G)`, `inflation`
(`sqrt(sum chi2 / dof)`, `dof` the fitted pixels' `n_diff - 1`; with `segments` less each
segment's differences with data less one and omega's free elements, NaN where none are left,
the group then `NOT_CONVERGED` with `STOP_BREAKDOWN`), `n_iter`, `converged`, `group_flags`, and the convergence report `stop_reason` (`STOP_*`),
`step_size`, `damping` `(G,)`, `jump_mask`: with `jump_search` the differences the search
masked (`(K, n_pix, G)` Bool, true = masked; `nothing` without it), and with `segments`
`offsets (K, n_segments, G)` (in the units of `reads` at the group's mean gain); the group axis is
dropped for a single group.
Fluxes are in the units of `reads` per read interval.
"""
function fit_omega(reads::AbstractArray, read_noise; gain = 1.0, mask = nothing,
        read_times = nothing, saturation = nothing, ref_index = nothing, rtol = 1e-8,
        max_iter = 50, mode::AbstractString = "default", segments = nothing,
        jump_search = false, jump_threshold = 4.5)
    reference = check_mode(mode)
    # Counts and switches as pyapred takes them (2.0 is a count, true is not; 0 and 1 switch).
    rtol = positive_option(rtol, "rtol")
    max_iter = count_option(max_iter, "max_iter", 1)
    jump_search = flag_option(jump_search, "jump_search")
    segments === nothing || !reference ||
        throw(ArgumentError("segments: not available with mode = \"reference\""))
    jump_search && check_threshold(jump_threshold, "jump_threshold")
    single, diffs, valid, flags, s2, dt, gain_map = group_inputs(reads, read_noise, gain, mask,
        read_times, saturation)
    K, P, G = size(diffs)
    kstar = ref_index === nothing ? nothing : reference_indices(ref_index, G, K)
    fit, n_diff, flags = fit_pixels(valid, flags)
    labels = segments === nothing ? nothing : segment_labels(segments, P, G)
    jump_mask = nothing
    if jump_search
        res, used, n_jumps = fit_omega_with_jumps(diffs, valid, s2, dt, fit;
            threshold = jump_threshold, max_rounds = 3, reference, rtol, max_iter,
            ref_index = kstar, segments = labels)
        n_diff = dropdims(sum(used; dims = 1); dims = 1)
        flags = flags .| ifelse.(n_jumps .> 0, JUMP_DETECTED, 0) .|
                ifelse.(fit .& (n_diff .<= MIN_CLEAN_DIFFS), FEW_CLEAN_DIFFS, 0)
        # The differences the search masked, for a later fit of the same pixels
        # (`fit_omega_chromatic`).
        jump_mask = Array{Bool}(valid .& .!used)
    else
        res = fit_omega_groups(diffs, valid, s2, dt, fit; reference, rtol, max_iter,
            ref_index = kstar, segments = labels)
    end
    group_flags = zeros(Int, G)
    inflation = zeros(G)
    for g in 1:G
        dof = sum(fit[p, g] ? n_diff[p, g] - 1 : 0 for p in 1:P)
        if labels !== nothing
            # Each segment's offsets take one degree of freedom per difference with data, less
            # one for their sum-to-zero constraint (NaN offsets: differences without data), and
            # omega its free elements. Where none is left (segments of one pixel each; one of
            # 2 pixels), the model fits the data exactly whatever they are: degenerate, however
            # its iteration ended.
            dof -= sum(max(count(isfinite, view(res.offsets, :, s, g)) - 1, 0)
                       for s in axes(res.offsets, 2); init = 0)
            dof -= max(count(view(res.has_data, :, g)) - 1, 0)
            if dof <= 0 && any(view(fit, :, g))
                res.converged[g] && (res.stop_reason[g] = STOP_BREAKDOWN)
                res.converged[g] = false
            end
        elseif dof - max(count(view(res.has_data, :, g)) - 1, 0) <= 0 && any(view(fit, :, g))
            # The paper's factor keeps omega's free elements in its denominator (negligible
            # for a fiber's pixels), but where they take every degree of freedom (one pixel:
            # K - 1 of each) the fit is exact whatever the data: degenerate, no inflation.
            res.converged[g] && (res.stop_reason[g] = STOP_BREAKDOWN)
            res.converged[g] = false
            dof = 0
        end
        chi2_sum = sum(c for c in view(res.chi2, :, g) if !isnan(c); init = 0.0)
        inflation[g] = dof > 0 ? sqrt(chi2_sum / dof) : NaN
        res.converged[g] || (group_flags[g] |= NOT_CONVERGED)
        all(view(res.has_data, :, g)) || (group_flags[g] |= OMEGA_ELEMENT_NO_DATA)
        any(view(fit, :, g)) || (group_flags[g] |= EMPTY_GROUP)
    end
    out = (; omega = res.omega, omega_cov = res.omega_cov, ref_index = res.ref_index,
        flux = res.flux ./ gain_map, flux_var = res.flux_var ./ gain_map .^ 2, chi2 = res.chi2,
        n_diff, inflation, n_iter = res.n_iter, converged = res.converged, flags, group_flags,
        stop_reason = res.stop_reason, step_size = res.step_size, damping = res.damping,
        jump_mask)
    if labels !== nothing
        mean_gain = reshape(sum(gain_map; dims = 1) ./ P, 1, 1, G)
        out = merge(out, (; offsets = res.offsets ./ mean_gain))
    end
    single || return out
    return map(drop_group_axis, out)
end

"A single group's field of a per-group result: the group axis dropped (`nothing` stays)."
drop_group_axis(v) = v === nothing ? nothing :
                     v isa AbstractVector ? v[1] : collect(selectdim(v, ndims(v), 1))

"""
    reference_indices(ref_index, G, K)

`fit_omega`'s `ref_index` as `G` indices (pyapred's `_as_ref_index`): whole numbers in `1:K`
(an integer, or a float of one; not a `Bool`), one for every group or one per group.
"""
function reference_indices(ref_index, G, K)
    values = ref_index isa AbstractArray ? vec(collect(ref_index)) : [ref_index]
    length(values) in (1, G) && all(k -> k isa Real && !(k isa Bool) && isfinite(k) &&
                                         isinteger(k) && 1 <= k <= K, values) ||
        throw(ArgumentError("ref_index: expected whole numbers in 1:$K, one or $G (one per " *
                            "group), got $ref_index"))
    return length(values) == G ? Int.(values) : fill(Int(values[1]), G)
end

"Validate `fit_omega`'s `segments`: integer labels >= 1 as a `(P, G)` matrix."
function segment_labels(segments, P, G)
    labels = segments isa AbstractArray ? segments : fill(segments, P)
    all(x -> x isa Integer && !(x isa Bool) && x >= 1, labels) ||
        throw(ArgumentError("segments: expected integer labels >= 1"))
    # The offsets are (K, largest label, G): labels are ranks, at most one segment per pixel
    # (pyapred refuses a label beyond them too: one of 1e9 asked for tens of GiB).
    isempty(labels) || maximum(labels) <= P ||
        throw(ArgumentError("segments: expected labels 1 .. $P (ranks: at most one segment " *
                            "per pixel), got $(maximum(labels))"))
    length(labels) == P && return repeat(reshape(Int.(collect(labels)), P, 1), 1, G)
    length(labels) == P * G && return reshape(Int.(collect(labels)), P, G)
    throw(ArgumentError("segments: expected $P or $(P * G) labels, got $(length(labels))"))
end

"""
    initial_guess(reads, read_noise; gain = 1.0, mask = nothing, read_times = nothing,
                  saturation = nothing, mode = "default")

The five-step initial guess of omega and the fluxes (spec section 2.6); arguments as in
[`fit_omega`](@ref). `mode = "reference"` keeps the reference's `(2 sigma^2)^2` error term (Q1).

# Returns
`(omega, flux, ref_index)`: omega `(K,)` or `(K, G)` with `omega[ref_index] == 1` and NaN where no
pixel has data; fluxes in the units of `reads` per read interval, NaN for pixels with fewer than 2
usable differences; `ref_index` 1-based.
"""
function initial_guess(reads::AbstractArray, read_noise; gain = 1.0, mask = nothing,
        read_times = nothing, saturation = nothing, mode::AbstractString = "default")
    reference = check_mode(mode)
    single, diffs, valid, flags, s2, dt, gain_map = group_inputs(reads, read_noise, gain, mask,
        read_times, saturation)
    K, P, G = size(diffs)
    fit, _, _ = fit_pixels(valid, flags)
    omega, flux, kstar = zeros(K, G), zeros(P, G), zeros(Int, G)
    initial_guess!(omega, flux, kstar, diffs, valid, s2, dt, fit; reference)
    flux = flux ./ gain_map
    return single ? (omega[:, 1], flux[:, 1], kstar[1]) : (omega, flux, kstar)
end

"""
    sample_omega(reads, read_noise, n_samples; burn_in, rng = Random.default_rng(), gain = 1.0,
                 mask = nothing, read_times = nothing, saturation = nothing, ref_index = nothing)

Gibbs sampler of omega and the fluxes of one pixel group (paper appendix A), started from the
Gauss-Newton solution of [`fit_omega`](@ref); see [`gibbs`](@ref).

# Arguments
- `reads`: `(n_pix, n_reads)`; `n_samples` samples are kept after `burn_in` sweeps.

# Returns
A NamedTuple `(omega_samples (K, n_samples), flux_samples (n_pix, n_samples), omega_mean,
omega_cov, flux, ref_index, group_flags)`; `flux` is the [`extract_fluxes`](@ref) result at
`omega_mean`; `group_flags` are the [`fit_omega`](@ref) start's (an omega element without data,
NaN in the samples, has `OMEGA_ELEMENT_NO_DATA`).
"""
function sample_omega(reads::AbstractMatrix, read_noise, n_samples; burn_in,
        rng::AbstractRNG = Random.default_rng(), gain = 1.0, mask = nothing,
        read_times = nothing, saturation = nothing, ref_index = nothing)
    n_samples = count_option(n_samples, "n_samples", 2)
    burn_in = count_option(burn_in, "burn_in", 0)
    kw = (; gain, mask, read_times, saturation)
    start = fit_omega(reads, read_noise; ref_index, kw...)
    start.group_flags & EMPTY_GROUP == 0 ||
        throw(ArgumentError("reads: no pixel has 2 or more usable differences"))
    _, diffs, valid, flags, s2, dt, gain_map = group_inputs(reads, read_noise, gain, mask,
        read_times, saturation)
    K, P, _ = size(diffs)
    fit, _, _ = fit_pixels(valid, flags)
    kstar = start.ref_index
    n_free = count(k -> isfinite(start.omega[k]) && k != kstar, 1:K)
    noise = randn(rng, P + n_free, burn_in + n_samples)
    omega_s, flux_s = gibbs(diffs, valid, s2, dt, fit, reshape(start.omega, K, 1),
        reshape(start.flux .* gain_map[:, 1], P, 1), kstar, burn_in, noise)
    flux_s = flux_s ./ gain_map[:, 1]
    omega_mean = vec(mean(omega_s; dims = 2))
    omega_cov = cov(omega_s; dims = 2)
    omega_cov[.!isfinite.(omega_cov)] .= 0.0
    omega_cov[kstar, :] .= 0.0
    omega_cov[:, kstar] .= 0.0
    flux = extract_fluxes(reads, read_noise, omega_mean; kw...)
    return (; omega_samples = omega_s, flux_samples = flux_s, omega_mean, omega_cov, flux,
        ref_index = kstar, group_flags = start.group_flags)
end
