# A drop-in for ApogeeReduction.jl's `sutr_wood` (src/ar3D.jl), with the time-variable model.

"""
    sutr_pixel(d, design, valid, s2, n_repeat, buf, work)

Optimal fit of one pixel's differences `d` (e-) with the design `design` (omega, or ones), using
only the differences where `valid`. Returns `(flux, variance, chi2, n_used)` in electrons.
"""
function sutr_pixel(d, design, valid, s2, n_repeat, buf, work)
    n = count(valid)
    n == 0 && return 0.0, Inf, 0.0, 0
    a0 = median_rate(d, design, valid, buf)
    flux, var, chi2 = gls_pixel(d, design, valid, s2, a0, n_repeat, work)
    return flux, var, chi2, n
end

"Fill the per-pixel buffers from ApogeeReduction.jl's arrays; returns the gain."
function load_pixel!(d, design, valid, dimages, gain_mat, last_unsaturated, not_cosmic_ray,
        omega, x, y)
    g = Float64(gain_mat[x, y])
    @inbounds for k in eachindex(d)
        ok = k <= last_unsaturated[x, y] && not_cosmic_ray[x, y, k] &&
             isfinite(dimages[x, y, k]) && isfinite(omega[k])
        valid[k] = ok
        d[k] = ok ? Float64(dimages[x, y, k]) * g : 0.0
        design[k] = ok ? omega[k] : 0.0
    end
    return g
end

"Rate, ivar and chi2 in DN per read from the electron-unit results of [`sutr_pixel`](@ref)."
to_dn(flux, var, chi2, n, g) = n == 0 ? (0.0, 0.0, 0.0) : (flux / g, g^2 / var, chi2)

"Fit every pixel of the columns `xs` and rows `ys` with one design vector; threaded over `xs`."
function sutr_region!(rates, ivars, chi2s, dimages, gain_mat, read_var_mat, last_unsaturated,
        not_cosmic_ray, omega, xs, ys, n_repeat)
    Threads.@threads for x in collect(xs)
        sutr_column!(rates, ivars, chi2s, dimages, gain_mat, read_var_mat, last_unsaturated,
            not_cosmic_ray, omega, x, ys, n_repeat)
    end
    return nothing
end

"""
    sutr_omega(dimages, gain_mat, read_var_mat, last_unsaturated, not_cosmic_ray; n_repeat = 2,
               trace_centers = nothing, half_width = 2, n_bright = 100, ref_index = nothing,
               mode = "default", rtol = 1e-8, max_iter = 50)

Drop-in for ApogeeReduction.jl's `sutr_wood`, with the same positional arguments, units and axis
order: the first three fields of the result are `sutr_wood`'s `(rates, ivars, chi2s)` for the
constant-flux model, so `rates, ivars, chi2s = sutr_omega(...)` works unchanged. Given trace
centers it also fits omega per fiber and re-extracts the pixels along each trace with it.

# Arguments
- `dimages`: `(npix_x, npix_y, n_diffs)` read differences in DN (`diffify_datacube!`), e.g.
  `(2560, 2048, n_reads - 1)`; `Float32` or `Float64`.
- `gain_mat`: `(npix_x, npix_y)` gain, e-/DN.
- `read_var_mat`: `(npix_x, npix_y)` single-read variance, DN^2.
- `last_unsaturated`: `(npix_x, npix_y)` last usable difference (1-based; 0 = none).
- `not_cosmic_ray`: `(npix_x, npix_y, n_diffs)` `Bool`, `false` drops that difference.

# Keyword Arguments
- `n_repeat`: GLS passes (covariance refreshes), 2 as in `sutr_wood`.
- `trace_centers`: `(n_x, n_fibers)` 1-based trace y-centers per column x (`extract_trace_centers`
  of `ar1D` files), or `(n_x, n_fibers, 3)` `trace_params` (`traceMain` files; the center is
  `[:, :, 2]`). NaN or out-of-range centers are skipped.
- `half_width`: pixels within `half_width` rows of `round(y)` are re-extracted with the fiber's omega.
- `n_bright`: the brightest on-trace pixels (constant-model rate) that fit each fiber's omega.
- `ref_index`, `mode`, `rtol`, `max_iter`: as in [`fit_omega`](@ref).

# Returns
A NamedTuple:
- `rates`, `ivars`, `chi2s`: `(npix_x, npix_y)` constant model, DN/read, 1/(DN/read)^2 and chi2;
  0 where no difference is usable (as `sutr_wood`).
- `omega`: `(n_diffs, n_fibers)` omega per fiber (NaN columns for fibers with no usable pixel);
  `omega_converged`, `omega_ref_index` `(n_fibers,)`.
- `tv_rates`, `tv_ivars`, `tv_chi2s`: `(npix_x, npix_y)` like `rates`, with the pixels along each
  trace re-extracted with that fiber's omega (time-variable model); equal to the constant-model
  arrays elsewhere, and the same arrays when `trace_centers === nothing`.
"""
function sutr_omega(dimages::AbstractArray{<:Real, 3}, gain_mat::AbstractMatrix,
        read_var_mat::AbstractMatrix, last_unsaturated::AbstractMatrix,
        not_cosmic_ray::AbstractArray{Bool, 3}; n_repeat::Integer = 2, trace_centers = nothing,
        half_width::Integer = 2, n_bright::Integer = 100, ref_index = nothing,
        mode::AbstractString = "default", rtol::Real = 1e-8, max_iter::Integer = 50)
    nx, ny, K = size(dimages)
    for (name, a) in (("gain_mat", gain_mat), ("read_var_mat", read_var_mat),
        ("last_unsaturated", last_unsaturated))
        size(a) == (nx, ny) || throw(DimensionMismatch("$name: expected size $((nx, ny)), got $(size(a))"))
    end
    size(not_cosmic_ray) == size(dimages) ||
        throw(DimensionMismatch("not_cosmic_ray: expected size $(size(dimages))"))
    reference = check_mode(mode)
    rates, ivars, chi2s = zeros(nx, ny), zeros(nx, ny), zeros(nx, ny)
    args = (dimages, gain_mat, read_var_mat, last_unsaturated, not_cosmic_ray)
    sutr_region!(rates, ivars, chi2s, args..., ones(K), 1:nx, 1:ny, n_repeat)
    trace_centers === nothing && return (; rates, ivars, chi2s, omega = zeros(K, 0),
        omega_converged = Bool[], omega_ref_index = Int[], tv_rates = rates, tv_ivars = ivars,
        tv_chi2s = chi2s)

    centers = ndims(trace_centers) == 3 ? view(trace_centers, :, :, 2) : trace_centers
    n_fibers = size(centers, 2)
    omega = fill(NaN, K, n_fibers)
    omega_converged, omega_ref_index = zeros(Bool, n_fibers), zeros(Int, n_fibers)
    on_chip(y) = isfinite(y) && 0.5 < y < ny + 0.5  # round() ties to even: 0.5 -> 0
    rows = [[(x, round(Int, centers[x, f])) for x in 1:min(nx, size(centers, 1))
             if on_chip(centers[x, f])] for f in 1:n_fibers]
    Threads.@threads for f in 1:n_fibers
        pixels = filter(xy -> last_unsaturated[xy...] >= 2 && ivars[xy...] > 0, rows[f])
        isempty(pixels) && continue
        order = sortperm([rates[x, y] for (x, y) in pixels]; rev = true)
        pixels = pixels[order[1:min(n_bright, length(order))]]
        P = length(pixels)
        diffs, valid, s2 = zeros(K, P, 1), zeros(Bool, K, P, 1), zeros(P, 1)
        design = zeros(K)
        for (p, (x, y)) in enumerate(pixels)
            g = load_pixel!(view(diffs, :, p, 1), design, view(valid, :, p, 1), dimages,
                gain_mat, last_unsaturated, not_cosmic_ray, ones(K), x, y)
            s2[p, 1] = Float64(read_var_mat[x, y]) * g^2
        end
        fit = reshape([count(view(valid, :, p, 1)) >= 2 for p in 1:P], P, 1)
        res = fit_omega_groups(diffs, valid, s2, ones(K), fit; reference, rtol, max_iter,
            ref_index = ref_index === nothing ? nothing : [ref_index])
        omega[:, f] = res.omega[:, 1]
        omega_converged[f] = res.converged[1]
        omega_ref_index[f] = res.ref_index[1]
    end
    tv_rates, tv_ivars, tv_chi2s = copy(rates), copy(ivars), copy(chi2s)
    for f in 1:n_fibers
        all(isnan, view(omega, :, f)) && continue
        Threads.@threads for i in eachindex(rows[f])
            x, y0 = rows[f][i]
            ys = max(1, y0 - half_width):min(ny, y0 + half_width)
            sutr_column!(tv_rates, tv_ivars, tv_chi2s, args..., view(omega, :, f), x, ys,
                n_repeat)
        end
    end
    return (; rates, ivars, chi2s, omega, omega_converged, omega_ref_index, tv_rates, tv_ivars,
        tv_chi2s)
end

"Fit the pixels `(x, y)` for `y` in `ys` with the design `omega` (one trace column)."
function sutr_column!(rates, ivars, chi2s, dimages, gain_mat, read_var_mat, last_unsaturated,
        not_cosmic_ray, omega, x, ys, n_repeat)
    K = size(dimages, 3)
    d, design, buf, work, valid = zeros(K), zeros(K), zeros(K), zeros(K, 6), zeros(Bool, K)
    for y in ys
        g = load_pixel!(d, design, valid, dimages, gain_mat, last_unsaturated, not_cosmic_ray,
            omega, x, y)
        fit = sutr_pixel(d, design, valid, Float64(read_var_mat[x, y]) * g^2, n_repeat, buf, work)
        rates[x, y], ivars[x, y], chi2s[x, y] = to_dn(fit..., g)
    end
    return nothing
end
