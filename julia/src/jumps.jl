# Jump (cosmic-ray) search inside the constant and time-variable ramp models: the twin of
# `pyapred/solver/_jumps.py` (`search_pixel`, `find_jumps_kernel`, `search_groups_kernel`,
# `fit_omega_with_jumps`) and of `find_jumps` in `pyapred/solver/api.py`.
#
# Brandt's likelihood search (`docs/jumps.md`, math-spec section 1.6) with the design vector
# x = omega * dt in place of the vector of ones. For each clean difference k the pixel is refitted
# with one extra parameter, a jump b in difference k (model a x + b e_k), and optionally with two
# jumps in the adjacent differences k, k+1. With u = C^-1 x, z = C^-1 d, a = x'z / x'u and
# S = [C^-1]_JJ - u_J u_J' / x'u for the jump set J, the drop in chi2 is q' S^-1 q, q = z_J - a u_J.
# The difference (or pair) with the largest drop, after subtracting each option's threshold, is
# masked and the search repeats until nothing passes or at most 3 differences remain. The
# covariance is built at the median difference rate; a pixel where that search flags anything is
# searched again from the start at the GLS rate of the differences left clean.

"The search stops once this many clean differences or fewer are left (spec section 1.6)."
const MIN_CLEAN_DIFFS = 3
"""Columns of the scratch matrix of [`search_pixel!`](@ref): [`search_at_rate!`](@ref)'s 10, and
the pixel's own `d`, `x` and `valid` for the second search."""
const N_JUMP_WORK = 13

"""
    log_erfc(x)

`log(erfc(x))` for `x >= 0` to about 1e-15 relative, without underflow: the positive series of
erf below 2, the continued fraction of erfc (modified Lentz) above. Base Julia has no `erfc` and
the package uses standard libraries only.
"""
function log_erfc(x::Real)
    x = Float64(x)
    x >= 0 || throw(ArgumentError("log_erfc: expected x >= 0, got $x"))
    x < 2.0 && return log1p(-erf_series(x))  # special.jl: a series of positive terms
    # erfc(x) = exp(-x^2)/sqrt(pi) / fraction (special.jl), in logs: no underflow at large x.
    return -x * x - 0.5 * log(pi) - log(erfc_denominator(x))
end

"""
    chi2_thresholds(threshold)

Chi2-drop thresholds `(one, two)` for one jump and for two adjacent jumps at `threshold` sigma:
`threshold^2` (chi2 with 1 degree of freedom), and the chi2 with 2 degrees of freedom at the same
two-sided tail probability, `-2 log erfc(threshold / sqrt 2)`, as in stcal (23.8 for 4.5 sigma).
"""
function chi2_thresholds(threshold::Real)
    return Float64(threshold)^2, -2.0 * log_erfc(threshold / sqrt(2.0))
end

# The largest jump threshold, sigma (pyapred's `_MAX_THRESHOLD`): beyond it the chi2 drops of
# `chi2_thresholds` are no longer finite (from 1e155 nothing was ever flagged).
const MAX_THRESHOLD = 1e6

"""
    check_threshold(threshold, name)

A jump threshold in sigma, as pyapred's `_check_threshold` takes it: a real number (not a
`Bool`) above 0 and at most [`MAX_THRESHOLD`](@ref); returned as `Float64`.
"""
function check_threshold(threshold, name)
    threshold isa Real && !(threshold isa Bool) && 0 < threshold <= MAX_THRESHOLD ||
        throw(ArgumentError("$name: expected a value > 0 (sigma), at most 1e+06, got $threshold"))
    return Float64(threshold)
end

"""
    search_pixel!(d, x, valid, s2, rate, thr_one, thr_two, two_adjacent, max_jumps, work)

The jump search of one pixel: [`search_at_rate!`](@ref) at `rate`, and where that flags anything,
again from the start at the GLS rate of the differences it left clean; returns the number of
differences flagged.

`rate` is the median of the differences (Brandt's guess, spec section 1.6). Where read noise
rules, the median scatters several times more than the GLS rate, and a low draw underrates the
photon noise, so that clean differences pass the threshold (0.64 % of the pixels at 1 e- per
read, read noise 5 e-, 50 reads; 0.05 % with the second search: pyapred's `docs/jumps.md`).
Pixels the first search leaves alone keep its result.

# Arguments
- as in [`search_at_rate!`](@ref), with `work` a `(K, 13)` scratch matrix: its columns 11-13
  keep the pixel's own `d`, `x` and `valid` for the second search.
"""
function search_pixel!(d, x, valid, s2, rate, thr_one, thr_two, two_adjacent::Bool,
        max_jumps::Integer, work)
    d0, x0, valid0 = view(work, :, 11), view(work, :, 12), view(work, :, 13)
    K = length(d)
    @inbounds for k in 1:K
        d0[k] = d[k]
        x0[k] = x[k]
        valid0[k] = valid[k] ? 1.0 : 0.0
    end
    n_flagged = search_at_rate!(d, x, valid, s2, rate, thr_one, thr_two, two_adjacent,
        max_jumps, work)
    n_flagged == 0 && return 0
    clean_rate = gls_rate(d, x, valid, s2, rate)
    isfinite(clean_rate) || return n_flagged  # no design left (x 0 on every clean difference)
    @inbounds for k in 1:K
        d[k] = d0[k]
        x[k] = x0[k]
        valid[k] = valid0[k] != 0.0
    end
    return search_at_rate!(d, x, valid, s2, max(clean_rate, 0.0), thr_one, thr_two,
        two_adjacent, max_jumps, work)
end

"""
    gls_rate(d, x, valid, s2, rate)

GLS rate `x' C^-1 d / x' C^-1 x` of the `valid` differences, `C` at `rate` (the forward sweep of
[`search_at_rate!`](@ref), with `d` and `x` 0 where not valid); `NaN` where `x' C^-1 x` is 0 (no
design left).
"""
function gls_rate(d, x, valid, s2, rate)
    xu = 0.0
    xz = 0.0
    piv = 1.0
    yx = 0.0
    yd = 0.0
    @inbounds for k in 1:length(d)
        alpha = valid[k] ? max(rate * x[k], 0.0) + 2.0 * s2 : 1.0
        beta = k > 1 && valid[k] && valid[k - 1] ? -s2 : 0.0
        lk = beta / piv
        piv = alpha - lk * beta
        yx = x[k] - lk * yx
        yd = d[k] - lk * yd
        xu += yx * yx / piv
        xz += yx * yd / piv
    end
    return xu > 0.0 ? xz / xu : NaN
end

"""
    search_at_rate!(d, x, valid, s2, rate, thr_one, thr_two, two_adjacent, max_jumps, work)

Brandt's iterative jump search on one pixel's differences, with the covariance at `rate`; returns
the number of differences flagged.

# Arguments
- `d`, `x`: `(K,)` differences (e-) and design `omega * dt`, 0 where not `valid`; the entries of
  flagged differences are set to 0 in place.
- `valid`: `(K,)` usable differences; flagged ones are set to `false` in place.
- `s2`, `rate`: single-read noise variance (e-^2) and the rate of the photon noise.
- `thr_one`, `thr_two`: chi2-drop thresholds ([`chi2_thresholds`](@ref)).
- `two_adjacent`: also try two jumps in adjacent differences.
- `max_jumps`: stop once this many differences are flagged (a pair may pass it by one).
- `work`: a `(K, 10)` or larger scratch matrix.
"""
function search_at_rate!(d, x, valid, s2, rate, thr_one, thr_two, two_adjacent::Bool,
        max_jumps::Integer, work)
    K = length(d)
    alpha, beta, piv, low = view(work, :, 1), view(work, :, 2), view(work, :, 3), view(work, :, 4)
    back, yx, yd = view(work, :, 5), view(work, :, 6), view(work, :, 7)
    u, z, cinv = view(work, :, 8), view(work, :, 9), view(work, :, 10)
    n_valid = count(valid)
    n_flagged = 0
    while n_valid > MIN_CLEAN_DIFFS && n_flagged < max_jumps
        @inbounds for k in 1:K  # C(rate), as factor! builds it
            alpha[k] = valid[k] ? max(rate * x[k], 0.0) + 2.0 * s2 : 1.0
            beta[k] = k < K && valid[k] && valid[k + 1] ? -s2 : 0.0
        end
        # Two independent recursions share one loop, so that their divisions overlap: downwards
        # the L D L^T pivots (factor!) with the forward substitutions of x and d and the sums
        # x^T C^-1 x, x^T C^-1 d; upwards the pivots of the backward factorisation, for the
        # diagonal of C^-1 (spec section 1.5). Each value is computed as in the separate loops.
        xu = 0.0
        xz = 0.0
        @inbounds begin
            piv[1] = alpha[1]
            low[1] = 0.0
            yx[1] = x[1]
            yd[1] = d[1]
            xu += yx[1] * yx[1] / piv[1]
            xz += yx[1] * yd[1] / piv[1]
            back[K] = alpha[K]
        end
        @inbounds for k in 2:K
            lk = beta[k - 1] / piv[k - 1]
            low[k] = lk
            piv[k] = alpha[k] - lk * beta[k - 1]
            yx[k] = x[k] - lk * yx[k - 1]
            yd[k] = d[k] - lk * yd[k - 1]
            xu += yx[k] * yx[k] / piv[k]
            xz += yx[k] * yd[k] / piv[k]
            j = K + 1 - k
            back[j] = alpha[j] - beta[j] * beta[j] / back[j + 1]
        end
        xu > 0.0 || break
        a = xz / xu
        # The backward substitutions (backward!) of x and d, together.
        @inbounds u[K] = yx[K] / piv[K]
        @inbounds z[K] = yd[K] / piv[K]
        @inbounds for k in (K - 1):-1:1
            u[k] = yx[k] / piv[k] - low[k + 1] * u[k + 1]
            z[k] = yd[k] / piv[k] - low[k + 1] * z[k + 1]
        end
        @inbounds for k in 1:K
            den = alpha[k]
            k > 1 && (den -= beta[k - 1] * beta[k - 1] / piv[k - 1])
            k < K && (den -= beta[k] * beta[k] / back[k + 1])
            cinv[k] = 1.0 / den
        end

        # The one- and two-jump chi2 drops at every difference, without branches so that the
        # loops vectorise; 0 where a drop is not defined (an unusable difference, s or det not
        # positive), which never wins. Then the first largest of each. The scratch columns
        # reused here are not read again in this round.
        drop_one, drop_two, s_k, q_k = alpha, back, yx, yd
        @inbounds for k in 1:K
            s = cinv[k] - u[k] * u[k] / xu
            q = z[k] - a * u[k]
            s_k[k] = s
            q_k[k] = q
            drop_one[k] = ifelse(valid[k] & (s > 0.0), q * q / s, 0.0)
        end
        best_one = 0.0
        k_one = 0
        @inbounds for k in 1:K
            if drop_one[k] > best_one
                best_one, k_one = drop_one[k], k
            end
        end
        best_two = 0.0
        k_two = 0
        if two_adjacent
            @inbounds for k in 1:(K - 1)
                s11 = s_k[k]
                s22 = s_k[k + 1]
                s12 = -cinv[k + 1] * beta[k] / piv[k] - u[k] * u[k + 1] / xu
                det = s11 * s22 - s12 * s12
                q1 = q_k[k]
                q2 = q_k[k + 1]
                drop = (s22 * q1 * q1 - 2.0 * s12 * q1 * q2 + s11 * q2 * q2) / det
                drop_two[k] = ifelse(valid[k] & valid[k + 1] & (det > 0.0), drop, 0.0)
            end
            @inbounds for k in 1:(K - 1)
                if drop_two[k] > best_two
                    best_two, k_two = drop_two[k], k
                end
            end
        end

        # Two jumps always fit better than one: compare them after subtracting their thresholds.
        if k_one > 0 && best_one > thr_one && best_one - thr_one > best_two - thr_two
            valid[k_one] = false
            d[k_one] = 0.0
            x[k_one] = 0.0
            n_valid -= 1
            n_flagged += 1
        elseif k_two > 0 && best_two > thr_two
            for k in k_two:(k_two + 1)
                valid[k] = false
                d[k] = 0.0
                x[k] = 0.0
            end
            n_valid -= 2
            n_flagged += 2
        else
            break
        end
    end
    return n_flagged
end

"""
    jump_sizes!(out, d, x, valid, jumps, s2, flux, work)

Fitted size (e-) of each flagged jump, given the final fit of the clean differences: with every
flagged difference j free, its estimate is `d_j - f x_j - E[n_j | clean residuals]`; the
conditional mean needs only the read-noise covariance `-s2` with the clean neighbours, times
`w = C^-1 r` of the clean differences (C at the final flux).

# Arguments
- `out`: `(K,)`; set where `jumps` is true, untouched elsewhere.
- `d`, `x`: data of the clean and of the flagged differences.
- `valid`, `jumps`: `(K,)` the clean and the flagged differences.
- `work`: a `(K, 7)` or larger scratch matrix.
"""
function jump_sizes!(out, d, x, valid, jumps, s2, flux, work)
    K = length(d)
    alpha, beta, piv, low = view(work, :, 1), view(work, :, 2), view(work, :, 3), view(work, :, 4)
    r, y, w = view(work, :, 5), view(work, :, 6), view(work, :, 7)
    factor!(alpha, beta, piv, low, x, valid, s2, flux)
    @inbounds for k in 1:K
        r[k] = valid[k] ? d[k] - flux * x[k] : 0.0
    end
    forward!(y, low, r)
    backward!(w, low, piv, y)
    @inbounds for k in 1:K
        jumps[k] || continue
        noise = 0.0
        k > 1 && valid[k - 1] && (noise -= s2 * w[k - 1])
        k < K && valid[k + 1] && (noise -= s2 * w[k + 1])
        out[k] = d[k] - flux * x[k] - noise
    end
    return out
end

"""
    find_jumps_kernel!(usable, jumps, jump_size, n_jumps, flux, flux_var, chi2, n_diff, flags,
                       reads, bad, use_mask, omega, groups, dt, read_noise, gain, saturation,
                       thr_one, thr_two, two_adjacent, max_jumps, n_pass)

Jump search and the eq-15 fit with the jumps masked, for every pixel of a flattened cube
(threaded over pixel blocks).

# Arguments
- `usable`, `jumps`: `(n_pix, K)` `Bool` outputs, the differences used by the final fit and the
  flagged ones; `jump_size`: `(n_pix, K)` fitted jumps in e- (0 where none). `jumps` and
  `jump_size` may both be `(0, K)`: then they are not written, and
  [`jump_sizes_kernel!`](@ref) gives them for the pixels with jumps (`n_jumps .> 0`).
- `n_jumps`, `n_diff`, `flags`: `(n_pix,)` integer outputs; `flux`, `flux_var`, `chi2`:
  `(n_pix,)` in e- per unit time.
- `reads`, `bad`, `use_mask`, `omega`, `groups`, `dt`, `read_noise`, `gain`, `saturation`,
  `n_pass`: as in [`extract_kernel!`](@ref).
- `thr_one`, `thr_two`, `two_adjacent`, `max_jumps`: as in [`search_pixel!`](@ref).
"""
function find_jumps_kernel!(usable::AbstractMatrix, jumps::AbstractMatrix,
        jump_size::AbstractMatrix, n_jumps::AbstractVector, flux::AbstractVector,
        flux_var::AbstractVector, chi2::AbstractVector, n_diff::AbstractVector,
        flags::AbstractVector, reads::AbstractMatrix, bad::AbstractArray, use_mask::Bool,
        omega::AbstractMatrix, groups::AbstractVector, dt::AbstractVector,
        read_noise::AbstractVector, gain::AbstractVector, saturation::AbstractVector,
        thr_one::Real, thr_two::Real, two_adjacent::Bool, max_jumps::Integer, n_pass::Integer)
    n_pix, N = size(reads)
    K = N - 1
    write_jumps = size(jumps, 1) == n_pix && size(jump_size, 1) == n_pix
    Threads.@threads for b in 1:cld(n_pix, BLOCK)
        p0 = (b - 1) * BLOCK + 1
        p1 = min(p0 + BLOCK - 1, n_pix)
        local_reads = Matrix{Float64}(undef, N, p1 - p0 + 1)
        local_bad = falses(N, p1 - p0 + 1)
        @inbounds for j in 1:N, p in p0:p1
            local_reads[j, p - p0 + 1] = reads[p, j]
            use_mask && (local_bad[j, p - p0 + 1] = bad[p, j])
        end
        valid_read = Vector{Bool}(undef, N)
        ramp_bad = Vector{Bool}(undef, N)
        valid = Vector{Bool}(undef, K)
        searched = Vector{Bool}(undef, K)
        flagged = Vector{Bool}(undef, K)
        size_k = zeros(K)
        d = zeros(K)
        x = zeros(K)
        buf = zeros(K)
        work = zeros(K, N_JUMP_WORK)
        for p in p0:p1
            ramp = view(local_reads, :, p - p0 + 1)
            ramp_bad .= view(local_bad, :, p - p0 + 1)
            g = gain[p]
            pflags = valid_reads!(valid_read, ramp, ramp_bad, use_mask, saturation[p])
            row = groups[p]
            n = 0
            @inbounds for k in 1:K
                w = omega[k, row]
                ok = valid_read[k] && valid_read[k + 1] && isfinite(w)
                valid[k] = ok
                d[k] = ok ? (ramp[k + 1] - ramp[k]) * g : 0.0
                x[k] = ok ? w * dt[k] : 0.0
                n += ok
            end
            searched .= valid
            s2 = (read_noise[p] * g)^2
            rate = median_rate(d, x, valid, buf)
            found = search_pixel!(d, x, valid, s2, rate, thr_one, thr_two, two_adjacent,
                max_jumps, work)
            n -= found
            flagged .= searched .& .!valid
            fill!(size_k, 0.0)
            n_jumps[p] = found
            n_diff[p] = n
            found > 0 && (pflags |= JUMP_DETECTED)
            n <= MIN_CLEAN_DIFFS && (pflags |= FEW_CLEAN_DIFFS)
            f, v, c = NaN, Inf, NaN
            if n >= 2
                # The final fit sees only the clean differences, as extract_fluxes would.
                a0 = found > 0 ? median_rate(d, x, valid, buf) : rate
                f, v, c = gls_pixel(d, x, valid, s2, a0, n_pass, work)
            end
            # No flux either where x' C^-1 x = 0 (omega 0 on every usable difference).
            if n < 2 || !(v < Inf)
                flags[p] = pflags | TOO_FEW_DIFFS
                flux[p] = NaN
                flux_var[p] = NaN
                chi2[p] = NaN
            else
                flags[p] = pflags
                if found > 0 && write_jumps
                    @inbounds for k in 1:K
                        if flagged[k]
                            d[k] = (ramp[k + 1] - ramp[k]) * g
                            x[k] = omega[k, row] * dt[k]
                        end
                    end
                    jump_sizes!(size_k, d, x, valid, flagged, s2, f, work)
                end
                flux[p] = f
                flux_var[p] = v
                chi2[p] = c
            end
            @inbounds for k in 1:K
                usable[p, k] = valid[k]
                if write_jumps
                    jumps[p, k] = flagged[k]
                    jump_size[p, k] = size_k[k]
                end
            end
        end
    end
    return nothing
end

"""
    jump_sizes_kernel!(jumps, jump_size, reads, bad, use_mask, omega, groups, dt, read_noise,
                       gain, saturation, pixels, usable, flux)

Where the jumps of the listed pixels are and how big, after [`find_jumps_kernel!`](@ref) ran
without its `jumps` and `jump_size` outputs. A flagged difference is one whose reads are usable
but that the final fit did not use; its size is [`jump_sizes!`](@ref) at the final flux, as
`find_jumps_kernel!` computes it. Jumps are rare: this replaces two `(n_pix, K)` outputs that
are almost all 0.

# Arguments
- `jumps`: `(m, K)` `Bool` output; `jump_size`: `(m, K)` fitted jumps in e- (0 where none, and
  on a pixel without flux).
- `reads`, `bad`, `use_mask`, `omega`, `groups`, `dt`, `read_noise`, `gain`, `saturation`: as in
  [`find_jumps_kernel!`](@ref).
- `pixels`: `(m,)` 1-based indices of the pixels.
- `usable`: `(n_pix, K)` and `flux`: `(n_pix,)` in e- per unit time, outputs of
  `find_jumps_kernel!`.
"""
function jump_sizes_kernel!(jumps::AbstractMatrix, jump_size::AbstractMatrix,
        reads::AbstractMatrix, bad::AbstractArray, use_mask::Bool, omega::AbstractMatrix,
        groups::AbstractVector, dt::AbstractVector, read_noise::AbstractVector,
        gain::AbstractVector, saturation::AbstractVector, pixels::AbstractVector,
        usable::AbstractMatrix, flux::AbstractVector)
    N = size(reads, 2)
    K = N - 1
    Threads.@threads for i in eachindex(pixels)
        p = pixels[i]
        ramp = Vector{Float64}(undef, N)
        ramp_bad = falses(N)
        @inbounds for j in 1:N
            ramp[j] = reads[p, j]
            use_mask && (ramp_bad[j] = bad[p, j])
        end
        valid_read = Vector{Bool}(undef, N)
        valid_reads!(valid_read, ramp, ramp_bad, use_mask, saturation[p])
        g = gain[p]
        row = groups[p]
        valid = Vector{Bool}(undef, K)
        flagged = Vector{Bool}(undef, K)
        d = zeros(K)
        x = zeros(K)
        size_k = zeros(K)
        @inbounds for k in 1:K
            w = omega[k, row]
            ok = valid_read[k] && valid_read[k + 1] && isfinite(w)
            valid[k] = usable[p, k]
            flagged[k] = ok && !valid[k]
            d[k] = ok ? (ramp[k + 1] - ramp[k]) * g : 0.0
            x[k] = ok ? w * dt[k] : 0.0
        end
        if !isnan(flux[p])
            jump_sizes!(size_k, d, x, valid, flagged, (read_noise[p] * g)^2, flux[p],
                zeros(K, N_JUMP_WORK))
        end
        @inbounds for k in 1:K
            jumps[i, k] = flagged[k]
            jump_size[i, k] = size_k[k]
        end
    end
    return nothing
end

"""
    search_groups_kernel!(out_valid, n_jumps, diffs, valid, s2, x, fit_pixel, thr_one, thr_two,
                          two_adjacent, max_jumps)

Jump search on the `(K, P, G)` layout of the omega fit (threaded over groups), with
`x = omega[:, g] .* dt`.

# Arguments
- `out_valid`: `(K, P, G)` output, `valid` without the flagged differences of the `fit_pixel`
  pixels; `n_jumps`: `(P, G)` output, the number flagged.
- `diffs`, `valid`: `(K, P, G)` differences (e-) and their usability.
- `s2`: `(P, G)` read-noise variances (e-^2); `fit_pixel`: `(P, G)` pixels to search.
- `x`: `(K, G)` design vectors; a non-finite element makes that difference unusable for the
  search (it is left as it is in `out_valid`).
- `thr_one`, `thr_two`, `two_adjacent`, `max_jumps`: as in [`search_pixel!`](@ref).
"""
function search_groups_kernel!(out_valid::AbstractArray{Bool, 3}, n_jumps::AbstractMatrix,
        diffs::AbstractArray{<:Real, 3}, valid::AbstractArray{Bool, 3}, s2::AbstractMatrix,
        x::AbstractMatrix, fit_pixel::AbstractMatrix, thr_one::Real, thr_two::Real,
        two_adjacent::Bool, max_jumps::Integer)
    K, P, G = size(diffs)
    Threads.@threads for g in 1:G
        d = zeros(K)
        xv = zeros(K)
        use = Vector{Bool}(undef, K)
        buf = zeros(K)
        work = zeros(K, N_JUMP_WORK)
        for p in 1:P
            out_valid[:, p, g] .= view(valid, :, p, g)
            n_jumps[p, g] = 0
            fit_pixel[p, g] || continue
            @inbounds for k in 1:K
                ok = valid[k, p, g] && isfinite(x[k, g])
                use[k] = ok
                d[k] = ok ? diffs[k, p, g] : 0.0
                xv[k] = ok ? x[k, g] : 0.0
            end
            rate = median_rate(d, xv, use, buf)
            found = search_pixel!(d, xv, use, s2[p, g], rate, thr_one, thr_two, two_adjacent,
                max_jumps, work)
            found > 0 || continue
            n_jumps[p, g] = found
            @inbounds for k in 1:K
                if valid[k, p, g] && isfinite(x[k, g]) && !use[k]
                    out_valid[k, p, g] = false
                end
            end
        end
    end
    return nothing
end

"""
    fit_omega_with_jumps(diffs, valid, s2, dt, fit_pixel; threshold, max_rounds, fit_options...)

Alternate the joint omega fit ([`fit_omega_groups`](@ref)) and the jump search until the jump
mask is stable. Every search starts again from the caller's `valid` with the latest omega, so a
difference flagged under the first omega (biased by the very jumps being sought) can be cleared
later. After the first round the reference element is kept fixed, so that omega's normalisation
does not change between rounds. Only the groups whose mask changed are refitted, from their last
solution, and only refitted groups are searched again: a group's search depends on nothing but
its own omega (and offsets).

With `segments` in `fit_options` (the 1/f nuisance term), the search judges each difference
against the whole fitted model: the segment's fitted offset is subtracted from the difference
([`without_offsets`](@ref)) before it is compared with `flux * omega * dt`.

# Arguments
- `diffs`, `valid`, `s2`, `dt`, `fit_pixel`: as in [`fit_omega_groups`](@ref).
- `threshold`: jump threshold in sigma; `max_rounds`: searches at most (the fit always matches
  the returned mask).
- `fit_options`: passed to `fit_omega_groups` (`reference`, `rtol`, `max_iter`, `ref_index`,
  `segments`).

# Returns
`(res, used, n_jumps)`: `fit_omega_groups`'s result for the returned mask, `valid` without the
flagged differences `(K, P, G)`, and the number flagged per pixel `(P, G)`.
"""
function fit_omega_with_jumps(diffs::AbstractArray{<:Real, 3}, valid::AbstractArray{Bool, 3},
        s2::AbstractMatrix, dt::AbstractVector, fit_pixel::AbstractMatrix; threshold::Real,
        max_rounds::Integer, fit_options...)
    thr_one, thr_two = chi2_thresholds(threshold)
    options = Dict{Symbol, Any}(fit_options)
    segments = get(options, :segments, nothing)
    res = fit_omega_groups(diffs, valid, s2, dt, fit_pixel; options...)
    used = Array{Bool}(valid)
    n_jumps = zeros(Int, size(fit_pixel))
    todo = collect(1:size(diffs, 3))  # the groups whose omega changed since their last search
    for _ in 1:max_rounds
        sub_valid = valid[:, :, todo]
        # Bool arrays, not BitArrays: threads write neighbouring elements.
        new_valid = Array{Bool}(undef, size(sub_valid))
        new_jumps = zeros(Int, size(fit_pixel, 1), length(todo))
        x = res.omega[:, todo] .* dt
        searched = segments === nothing ? view(diffs, :, :, todo) :
                   without_offsets(view(diffs, :, :, todo), view(res.offsets, :, :, todo),
                       view(segments, :, todo))
        search_groups_kernel!(new_valid, new_jumps, searched, sub_valid,
            view(s2, :, todo), x, view(fit_pixel, :, todo), thr_one, thr_two, false,
            typemax(Int))
        changed = [new_valid[:, :, i] != used[:, :, g] for (i, g) in enumerate(todo)]
        any(changed) || break
        todo = todo[changed]
        used[:, :, todo] = new_valid[:, :, changed]
        n_jumps[:, todo] = new_jumps[:, changed]
        # Every kernel of the fit reads a difference only where `used` marks it, so the flagged
        # ones need no zeroing, and a refit of every group needs no copy of the differences.
        every = length(todo) == size(diffs, 3)
        sub_used = every ? used : used[:, :, todo]
        sub_diffs = every ? diffs : diffs[:, :, todo]
        options[:ref_index] = res.ref_index[todo]
        options[:start] = (res.omega[:, todo], res.flux[:, todo])
        segments === nothing || (options[:segments] = segments[:, todo])
        part = fit_omega_groups(sub_diffs, sub_used,
            s2[:, todo], dt, fit_pixel[:, todo]; options...)
        for key in keys(part)
            dest = getfield(res, key)
            if key === :offsets  # the refitted groups may use fewer segment labels
                value = getfield(part, key)
                dest[:, :, todo] .= NaN
                dest[:, 1:size(value, 2), todo] .= value
            else
                selectdim(dest, ndims(dest), todo) .= getfield(part, key)
            end
        end
    end
    return res, used, n_jumps
end

"""
    without_offsets(diffs, offsets, segments)

`diffs (K, P, G)` less each pixel's segment offsets: `offsets (K, S, G)` (NaN: none, taken as 0)
at `segments (P, G)` (1-based labels). A new array.
"""
function without_offsets(diffs::AbstractArray{<:Real, 3}, offsets::AbstractArray{<:Real, 3},
        segments::AbstractMatrix{<:Integer})
    out = Array{Float64}(undef, size(diffs))
    K, P, G = size(diffs)
    for g in 1:G, p in 1:P
        s = segments[p, g]
        for k in 1:K
            c = offsets[k, s, g]
            out[k, p, g] = diffs[k, p, g] - (isnan(c) ? 0.0 : c)
        end
    end
    return out
end

"""
    find_jumps(reads, read_noise; omega = nothing, gain = 1.0, mask = nothing, threshold = 4.5,
               max_jumps = nothing, groups = nothing, read_times = nothing, saturation = nothing,
               two_adjacent = false)

Find jumps (cosmic rays) in every pixel's ramp, under the constant or time-variable model:
Brandt's likelihood search (spec section 1.6). For every clean difference `k` the ramp is
refitted with a free jump in that difference, model `f x + b e_k` with `x = omega * dt`
(`omega = 1`: the constant model); the difference whose jump lowers chi2 most is masked if the
drop exceeds `threshold^2`, and the search repeats until nothing passes or at most 3 clean
differences are left. The covariance is evaluated at the median difference rate, as in Brandt's
code; a pixel where that search flags anything is searched again from the start with the
covariance at the GLS rate of the differences left clean ([`search_pixel!`](@ref)). With `omega`
given, a dip in the sky is part of the model, not a jump.

# Arguments
- `reads`: `(pixels..., n_reads)` up-the-ramp reads, e- if `gain = 1`, else DN.
- `read_noise`: single-read sigma in the units of `reads`, scalar or of the pixel shape.

# Keyword Arguments
- `omega`: `(K,)` or `(K, n_groups)`, `K = n_reads - 1`; default all 1 (constant model).
- `gain`, `mask`, `read_times`, `saturation`: as in [`extract_fluxes`](@ref).
- `threshold`: significance in sigma; a pair of adjacent jumps needs the chi2 (2 dof) of the same
  tail probability ([`chi2_thresholds`](@ref)).
- `max_jumps`: stop a pixel's search after this many flagged differences; default no limit.
- `groups`: column of `omega` (1-based) for each pixel; required when `omega` is a matrix.
- `two_adjacent`: also search for jumps in two adjacent differences (one bad read).

# Returns
A NamedTuple with the fields of pyapred's `JumpResult`: `diff_mask`, `jumps`, `jump_size` of size
`(pixels..., K)` (`diff_mask` true where a difference is not used; `jump_size` in the units of
`reads`, 0 where no jump), `n_jumps` of the pixel shape, and `flux`, the NamedTuple
`(flux, flux_var, chi2, n_diff, flags)` of [`extract_fluxes`](@ref) from the clean differences,
whose flags add `JUMP_DETECTED` and `FEW_CLEAN_DIFFS`.
"""
function find_jumps(reads::AbstractArray, read_noise; omega = nothing, gain = 1.0,
        mask = nothing, threshold = 4.5, max_jumps = nothing, groups = nothing,
        read_times = nothing, saturation = nothing, two_adjacent = false)
    check_reads(reads; min_dims = 1)
    N = size(reads, ndims(reads))
    K = N - 1
    pixel_shape = size(reads)[1:(end - 1)]
    omega2d = omega === nothing ? ones(K, 1) : omega_table(omega, K)
    group_index = group_columns(groups, size(omega2d, 2), pixel_shape)
    thr_one, thr_two = chi2_thresholds(check_threshold(threshold, "threshold"))
    limit = max_jumps === nothing ? typemax(Int) : count_option(max_jumps, "max_jumps", 0)
    two_adjacent = flag_option(two_adjacent, "two_adjacent")
    sigma = pixel_map(read_noise, pixel_shape, "read_noise")
    gain_map = pixel_map(gain, pixel_shape, "gain")
    bad, use_mask = check_mask(mask, reads)
    sat = saturation_map(saturation, pixel_shape)
    dt = read_intervals(read_times, N)
    n_pix = prod(pixel_shape)
    usable, jumps = zeros(Bool, n_pix, K), zeros(Bool, n_pix, K)
    jump_size = zeros(n_pix, K)
    flux, flux_var, chi2 = zeros(n_pix), zeros(n_pix), zeros(n_pix)
    n_jumps, n_diff, flags = zeros(Int, n_pix), zeros(Int, n_pix), zeros(Int, n_pix)
    find_jumps_kernel!(usable, jumps, jump_size, n_jumps, flux, flux_var, chi2, n_diff, flags,
        reshape(reads, n_pix, N), bad, use_mask, omega2d, group_index, dt, sigma, gain_map, sat,
        thr_one, thr_two, two_adjacent, limit, 2)
    shape(v) = reshape(v, pixel_shape)
    diff_shape(v) = reshape(v, pixel_shape..., K)
    return (diff_mask = diff_shape(.!usable), jumps = diff_shape(jumps),
        jump_size = diff_shape(jump_size ./ gain_map), n_jumps = shape(n_jumps),
        flux = (flux = shape(flux ./ gain_map), flux_var = shape(flux_var ./ gain_map .^ 2),
            chi2 = shape(chi2), n_diff = shape(n_diff), flags = shape(flags)))
end
