// softmax_xent_subgroup.wgsl: the two reductions of xent_row_cached, with
// subgroup operations. Not a module on its own: the host builds
// softmax_xent.wgsl with its "row-cached reductions" block replaced by this
// file, only on devices with Features::SUBGROUP (naga refuses subgroup
// builtins elsewhere; the GL adapter here has none). In that module
// xent_row_cached is the RowCachedSubgroup layout; nothing else changes.
//
// Math and memory traffic: those of xent_row_cached: one read of the row into
// registers, one exp per element, one write of the gradient; 4 + 4 bytes per
// element. The reductions add one workgroup-memory write per subgroup and
// WG_SIZE / subgroup_size reads per thread.
//
// Workgroup layout: that of xent_row_cached. Each reduction is subgroupMax /
// subgroupAdd inside each subgroup; the subgroup's first invocation stores
// the result, and every thread folds the WG_SIZE / size results. No subgroup
// size is assumed (8 on lavapipe, 32 on NVIDIA, 32 or 64 on AMD): it is
// counted with subgroupAdd(1). Subgroups are assumed to be contiguous runs of
// local_invocation_index, which is how Vulkan, Metal and D3D12 drivers lay
// out one-dimensional workgroups, and which the tests check on every adapter
// that has subgroups.
//
// Barriers: one per reduction instead of a tree's log2(WG_SIZE), after the
// subgroup results are stored, so every thread reads all of them. The two
// reductions use different workgroup arrays, so none is needed between them.

fn reduce_max_zsum(tid: u32, m: f32, z_sum: f32) -> vec2<f32> {
    let sm = subgroupMax(m);
    let sz = subgroupAdd(z_sum);
    let size = subgroupAdd(1u);
    if (tid == subgroupMin(tid)) {
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
    return vec2(mm, zz);
}

fn reduce_sum(tid: u32, s: f32) -> f32 {
    let ss = subgroupAdd(s);
    let size = subgroupAdd(1u);
    if (tid == subgroupMin(tid)) {
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
