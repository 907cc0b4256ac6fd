// softmax_xent_subgroup.wgsl: xent_row_cached with subgroup reductions.
// Not a module on its own: the host appends it to softmax_xent.wgsl (whose
// bindings, Params, Target and helpers it uses) and builds the result only
// on devices with Features::SUBGROUP; naga refuses subgroup builtins
// elsewhere (the GL adapter here has none).
//
// Math and memory traffic: those of xent_row_cached (softmax_xent.wgsl):
// one read of the row into registers, one exp per element, one write of the
// gradient; 4 + 4 bytes per element.
//
// Workgroup layout: one workgroup of WG_SIZE threads per row, thread tid
// holding classes (k * WG_SIZE + tid) * 4 + j as in xent_row_cached. Each
// reduction is subgroupMax / subgroupAdd inside each subgroup, then lane 0
// of every subgroup stores its result in workgroup memory and every thread
// folds the WG_SIZE / subgroup_size results. No subgroup size is assumed
// (8 on lavapipe, 32 on NVIDIA, 32 or 64 on AMD); subgroups are assumed to
// be contiguous runs of local_invocation_index, which is how Vulkan, Metal
// and D3D12 drivers lay out one-dimensional workgroups, and which the tests
// check on every adapter that has subgroups.
//
// Barriers, two per reduction instead of a tree's log2(WG_SIZE): one after
// the subgroup results are stored (so every thread reads all of them), one
// after they are read (so the next reduction may overwrite them).

fn subgroup_max_zsum(tid: u32, lane: u32, size: u32, m: f32, z_sum: f32) -> vec2<f32> {
    let sm = subgroupMax(m);
    let sz = subgroupAdd(z_sum);
    if (lane == 0u) {
        red_max[tid] = sm;
        red_zsum[tid] = sz;
    }
    // Barrier: every subgroup's result is stored before anyone folds them.
    workgroupBarrier();
    var mm = LOWEST;
    var zz = 0.0;
    for (var i = 0u; i < WG_SIZE; i += size) {
        mm = max(mm, red_max[i]);
        zz += red_zsum[i];
    }
    // Barrier: all reads are done before red_* is written again.
    workgroupBarrier();
    return vec2(mm, zz);
}

fn subgroup_sum(tid: u32, lane: u32, size: u32, s: f32) -> f32 {
    let ss = subgroupAdd(s);
    if (lane == 0u) {
        red_sum[tid] = ss;
    }
    // Barrier: every subgroup's sum is stored before anyone adds them.
    workgroupBarrier();
    var total = 0.0;
    for (var i = 0u; i < WG_SIZE; i += size) {
        total += red_sum[i];
    }
    return total;
}

@compute @workgroup_size(WG_SIZE)
fn xent_row_cached_subgroup(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
    @builtin(subgroup_invocation_id) lane: u32,
    @builtin(subgroup_size) size: u32,
) {
    let row = wid.x;   // the host dispatches exactly `rows` workgroups
    let c_len = params.classes;
    let base = row * c_len;
    if (tid == 0u) {
        wg_label = labels[row];
    }
    let t = target_of(workgroupUniformLoad(&wg_label));
    let iters = (c_len + 4u * WG_SIZE - 1u) / (4u * WG_SIZE);
    var cache: array<vec4<f32>, CACHE4>;
    var m = LOWEST;
    var z_sum = 0.0;
    for (var k = 0u; k < iters; k++) {
        let c0 = (k * WG_SIZE + tid) * 4u;
        var v = vec4(LOWEST);
        for (var j = 0u; j < 4u; j++) {
            let c = c0 + j;
            if (c < c_len && !t.ignored) {
                let z = adjusted(base, c, t);
                v[j] = z;
                z_sum += z;
            }
        }
        cache[k] = v;
        m = max(m, max(max(v.x, v.y), max(v.z, v.w)));
    }
    let mz = subgroup_max_zsum(tid, lane, size, m, z_sum);
    let m_row = mz.x;
    var s = 0.0;
    for (var k = 0u; k < iters; k++) {
        let e = exp(cache[k] - vec4(m_row));
        cache[k] = e;
        s += e.x + e.y + e.z + e.w;
    }
    let s_row = subgroup_sum(tid, lane, size, s);

    if (tid == 0u) {
        var l = 0.0;
        if (t.bad) {
            l = nan();
        } else if (!t.ignored) {
            l = row_loss_of(t, m_row + log(s_row), adjusted(base, t.y, t), mz.y);
        }
        row_loss[row] = l;
    }
    if ((params.flags & FLAG_WRITE_GRAD) == 0u) {
        return;
    }
    let scale = grad_scale(row, t);
    let inv_s = 1.0 / s_row;
    let q_other = params.smoothing / f32(c_len);
    let q_true = 1.0 - params.smoothing + q_other;
    for (var k = 0u; k < iters; k++) {
        let c0 = (k * WG_SIZE + tid) * 4u;
        let e = cache[k];
        for (var j = 0u; j < 4u; j++) {
            let c = c0 + j;
            if (c < c_len) {
                var value = 0.0;
                if (t.bad) {
                    value = nan();
                } else if (!t.ignored) {
                    value = scale * (e[j] * inv_s - select(q_other, q_true, c == t.y));
                }
                store_grad(base + c, value);
            }
        }
    }
}
