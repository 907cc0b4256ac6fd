// softmax_xent_split.wgsl: the split-row layout of the fused loss, for huge C
// and few rows. The host appends this file to softmax_xent.wgsl, whose
// bindings, Params, helpers and workgroup trees it uses (src/kernels.rs,
// Family::SoftmaxXentSplit).
//
// Math (MATH.md sections 1-4, as in softmax_xent.wgsl): each row is cut into
// K chunks of L classes (K = params.seg_threads, L = params.seg_len, a power
// of two), so that a few rows still give K * N workgroups. Three passes:
//   xent_split_partial - a workgroup per (chunk k, row i): one read of the
//                        chunk, online max M_k, S_k = sum_c exp(z_c - M_k)
//                        and the sum of z, stored as partials[i * K + k].
//   xent_split_combine - a thread per row: the K partials folded in order
//                        (M = max M_k, S = sum S_k exp(M_k - M)), then
//                        LSE = M + log S, z_y (one read) and the row loss;
//                        (M, 1 / S) is kept in row_norm for the gradient pass.
//   xent_split_grad    - a workgroup per (chunk, row): a second read,
//                        dl/df_c = scale_i * alpha_y * (exp(z_c - M) / S - q_c).
// The combine order is fixed, so results are deterministic.
//
// Memory traffic per logit element: 8 bytes read (the chunk twice: a row
// split across workgroups cannot stay on chip between them) and 4 written;
// per chunk 16 bytes of partials, per row 8 bytes of (M, 1 / S). The forward alone
// (no gradient) is the first two passes: 4 bytes read.
//
// Workgroup layout: with b from storage (the GPU layout, chunks of up to
// 4096 classes) a workgroup of WG_SIZE threads per (chunk, row); thread t
// takes the four classes from 4t, then 4(t + WG_SIZE), ...: neighbouring
// threads read neighbouring 16 bytes. With b windows (the CPU layout, a
// chunk is a whole window of 16384 classes) a thread per row takes the
// whole chunk (place_of). Barriers: only in the GPU layout's partial pass,
// in its two workgroup trees (reduce_max_zsum, reduce_sum: after the
// partials are stored, and after each level).
//
// Where b comes from is fixed per entry point: class_params (one dispatch
// covers every chunk), or in the _windowed entries bias_table, bound by the
// host to the 64 KiB window of b (16384 classes) that holds this dispatch's
// chunks, one dispatch per window. CPU adapters turn a storage read into a
// loop over SIMD lanes but a uniform read into a vector gather, so there the
// windows save one storage read per element per pass.

@group(0) @binding(12) var<storage, read_write> partials: array<vec4<f32>>;
// Per row (M, 1 / S): the gradient pass forms p_c = exp(z_c - M) / S as the
// one-pass layouts do, not exp(z_c - LSE): LSE = M + log S rounds to f32's
// spacing at |LSE| (4e-6 at 35), which then lands on p_c whole, so a
// confident row's p_y - 1 came out twice its size.
@group(0) @binding(13) var<storage, read_write> row_norm: array<vec2<f32>>;

// Classes per uniform window of b.
const WINDOW_CLASSES: u32 = 16384u;

// b_c .. b_{c+3} for the vec4 of classes from c (c % 4 == 0), clamped to C.
fn split_bias4(c: u32, windowed: bool) -> vec4<f32> {
    if (windowed) {
        // The window holding chunk params._pad starts at class
        // params._pad * L (a multiple of WINDOW_CLASSES).
        return bias_table[(c % WINDOW_CLASSES) / 4u];
    }
    let last = params.classes - 1u;
    return vec4(class_params[min(c, last)], class_params[min(c + 1u, last)],
                class_params[min(c + 2u, last)], class_params[min(c + 3u, last)]);
}

// f_c .. f_{c+3} of the row at `base`; past `last` (the chunk's last class)
// the loads repeat it, and the caller masks those lanes.
fn split_logits4(base: u32, c: u32, last: u32, aligned: bool) -> vec4<f32> {
    if (aligned) {
        // C % 4 == 0 and L % 4 == 0: the chunk is whole vec4s.
        return logits4[(base + c) / 4u];
    }
    return vec4(logits[base + min(c, last)], logits[base + min(c + 1u, last)],
                logits[base + min(c + 2u, last)], logits[base + min(c + 3u, last)]);
}

// Which chunk k and row a thread works on, and whether that row exists.
// Storage-b entries (the GPU layout): a workgroup per (chunk, row). Windowed
// entries (the CPU layout): a thread per row, consecutive rows in
// consecutive threads, the whole chunk each; so no workgroup tree is needed
// and every lane reads the same b_c at once from a uniform buffer. (Mesa
// 22.3's lavapipe still gathers it lane by lane, since it broadcasts only
// at constant indices, but a uniform gather costs a few instructions per
// lane against about 22 for a storage read.)
struct Place {
    k: u32,
    row: u32,
    valid: bool,
}

fn place_of(wid: vec3<u32>, tid: u32, windowed: bool) -> Place {
    if (windowed) {
        let r = wid.x * WG_SIZE + tid;
        return Place(params._pad, min(r, params.rows - 1u), r < params.rows);
    }
    return Place(params._pad + wid.x, wid.y, true);
}

// A thread's walk over the chunk [c0, c1) as (first class, end, step):
// strided four classes at a time across the workgroup (neighbouring threads
// read neighbouring 16 bytes), or the whole chunk for a windowed thread.
fn walk_of(tid: u32, c0: u32, c1: u32, windowed: bool) -> vec3<u32> {
    if (windowed) {
        return vec3(c0, c1, 4u);
    }
    return vec3(c0 + 4u * tid, c1, 4u * WG_SIZE);
}

fn split_partial(wid: vec3<u32>, tid: u32, windowed: bool, aligned: bool) {
    let place = place_of(wid, tid, windowed);
    let k = place.k;
    let row = place.row;
    let c_len = params.classes;
    let base = row * c_len;
    let t = target_of(labels[row]);
    let c0 = k * params.seg_len;
    let c1 = min(c0 + params.seg_len, c_len);
    var m = LOWEST;
    var s = 0.0;
    var z_sum = 0.0;
    let walk = walk_of(tid, c0, c1, windowed);
    for (var c = walk.x; c < walk.y; c += walk.z) {
        let cs = vec4(c, c + 1u, c + 2u, c + 3u);
        let inside = cs < vec4(c1);
        let x = split_logits4(base, c, c1 - 1u, aligned);
        let z = x + split_bias4(c, windowed) - select(vec4(0.0), vec4(t.margin), cs == vec4(t.y));
        let zm = select(vec4(LOWEST), z, inside);
        // Online softmax, one rescale per four classes. (Lanes past the
        // chunk are masked after exp: while every z so far is -inf, m_new is
        // LOWEST and exp(LOWEST - m_new) would be 1.)
        let m_new = max(m, max(max(zm.x, zm.y), max(zm.z, zm.w)));
        let e = select(vec4(0.0), exp(zm - vec4(m_new)), inside);
        s = s * exp(m - m_new) + (e.x + e.y + e.z + e.w);
        m = m_new;
        let zs = select(vec4(0.0), z, inside);
        z_sum += zs.x + zs.y + zs.z + zs.w;
    }
    if (windowed) {
        // The thread holds the whole chunk.
        if (place.valid) {
            partials[row * params.seg_threads + k] = vec4(m, s, z_sum, 0.0);
        }
    } else {
        let mz = reduce_max_zsum(tid, m, z_sum);
        let s_chunk = reduce_sum(tid, s * exp(m - mz.x));
        if (tid == 0u) {
            partials[row * params.seg_threads + k] = vec4(mz.x, s_chunk, mz.y, 0.0);
        }
    }
}

fn split_combine(row: u32, aligned: bool) {
    if (row >= params.rows) {
        return;
    }
    let chunks = params.seg_threads;
    let first = row * chunks;
    var m = LOWEST;
    for (var k = 0u; k < chunks; k++) {
        m = max(m, partials[first + k].x);
    }
    var s = 0.0;
    var z_sum = 0.0;
    for (var k = 0u; k < chunks; k++) {
        let p = partials[first + k];
        s += p.y * exp(p.x - m);
        z_sum += p.z;
    }
    let lse = m + log(s);
    row_norm[row] = vec2(m, 1.0 / s);
    let t = target_of(labels[row]);
    var l = 0.0;
    if (t.bad) {
        l = nan();
    } else if (!t.ignored) {
        let at = row * params.classes + t.y;
        var x_y = 0.0;
        if (aligned) {
            x_y = logits4[at / 4u][at % 4u];
        } else {
            x_y = logits[at];
        }
        l = row_loss_of(t, lse, x_y + class_params[t.y] - t.margin, z_sum);
    }
    row_loss[row] = l;
}

fn split_grad(wid: vec3<u32>, tid: u32, windowed: bool, aligned: bool, in_place: bool) {
    let place = place_of(wid, tid, windowed);
    if (!place.valid) {
        return;
    }
    let k = place.k;
    let row = place.row;
    let c_len = params.classes;
    let base = row * c_len;
    let t = target_of(labels[row]);
    let c0 = k * params.seg_len;
    let c1 = min(c0 + params.seg_len, c_len);
    let norm_row = row_norm[row];
    let scale = grad_scale(row, t);
    let fill = select(0.0, nan(), t.bad);
    let dead = t.bad || t.ignored;
    let walk = walk_of(tid, c0, c1, windowed);
    for (var c = walk.x; c < walk.y; c += walk.z) {
        let cs = vec4(c, c + 1u, c + 2u, c + 3u);
        let x = split_logits4(base, c, c1 - 1u, aligned);
        let z = x + split_bias4(c, windowed) - select(vec4(0.0), vec4(t.margin), cs == vec4(t.y));
        let g = segment_grad(exp(z - vec4(norm_row.x)), c, t, scale, norm_row.y, fill, dead);
        // The destination is fixed per entry point (see row_segments).
        if (aligned) {
            if (in_place) {
                logits4[(base + c) / 4u] = g;
            } else {
                grad4[(base + c) / 4u] = g;
            }
        } else {
            store_grad4(base + c, g, c1 - c, in_place);
        }
    }
}

@compute @workgroup_size(WG_SIZE)
fn xent_split_partial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    split_partial(wid, tid, false, false);
}

@compute @workgroup_size(WG_SIZE)
fn xent_split_partial4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    split_partial(wid, tid, false, true);
}

@compute @workgroup_size(WG_SIZE)
fn xent_split_partial_windowed(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    split_partial(wid, tid, true, false);
}

@compute @workgroup_size(WG_SIZE)
fn xent_split_partial4_windowed(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    split_partial(wid, tid, true, true);
}

@compute @workgroup_size(WG_SIZE)
fn xent_split_combine(@builtin(global_invocation_id) gid: vec3<u32>) {
    split_combine(gid.x, false);
}

@compute @workgroup_size(WG_SIZE)
fn xent_split_combine4(@builtin(global_invocation_id) gid: vec3<u32>) {
    split_combine(gid.x, true);
}

@compute @workgroup_size(WG_SIZE)
fn xent_split_grad(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    split_grad(wid, tid, false, false, false);
}

@compute @workgroup_size(WG_SIZE)
fn xent_split_grad_in_place(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    split_grad(wid, tid, false, false, true);
}

@compute @workgroup_size(WG_SIZE)
fn xent_split_grad4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    split_grad(wid, tid, false, true, false);
}

@compute @workgroup_size(WG_SIZE)
fn xent_split_grad4_in_place(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    split_grad(wid, tid, false, true, true);
}

@compute @workgroup_size(WG_SIZE)
fn xent_split_grad_windowed(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    split_grad(wid, tid, true, false, false);
}

@compute @workgroup_size(WG_SIZE)
fn xent_split_grad_windowed_in_place(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    split_grad(wid, tid, true, false, true);
}

@compute @workgroup_size(WG_SIZE)
fn xent_split_grad4_windowed(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    split_grad(wid, tid, true, true, false);
}

@compute @workgroup_size(WG_SIZE)
fn xent_split_grad4_windowed_in_place(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    split_grad(wid, tid, true, true, true);
}
