// softmax_xent_unrolled.wgsl: the row-unrolled layout of the fused loss, for
// small C. The host appends this file to softmax_xent.wgsl, whose bindings,
// Params and helpers it uses (src/kernels.rs, Family::SoftmaxXentUnrolled).
//
// Math: as in softmax_xent.wgsl (MATH.md sections 1-4), for one row per
// thread. C is the pipeline constant ROW_C, so every loop below has a fixed
// trip count: compilers unroll it and the row (z, then exp(z - M)) sits in
// registers instead of an indexed private array, which CPU adapters keep in
// memory (on lavapipe at 262144 x 10 this kernel measured 19 ms against
// 44 ms for a row-segments thread doing the same work). One pipeline per C,
// for C <= ROW_C_MAX.
//
// Memory traffic per logit element: 4 bytes read, 4 written (forward alone:
// 4 read). Per row: the label, the loss, and m_y, alpha_y from the uniform
// table (3C <= 32768 always holds here).
//
// Workgroup layout: WG_SIZE threads, a row each; no workgroup memory, no
// barriers. Rows past N compute on the last row and store nothing.

override ROW_C: u32 = 16u;       // C, set per pipeline, 1 <= ROW_C <= ROW_C_MAX
const ROW_C_MAX: u32 = 32u;

fn row_unrolled(row_unclamped: u32, in_place: bool) {
    let valid = row_unclamped < params.rows;
    let row = min(row_unclamped, params.rows - 1u);
    let base = row * ROW_C;
    let t = target_from_table(labels[row], true);
    var z: array<f32, ROW_C_MAX>;
    var m = LOWEST;
    var z_sum = 0.0;
    var z_y = 0.0;
    for (var c = 0u; c < ROW_C; c++) {
        let zc = logits[base + c] + bias_table[c / 4u][c % 4u] - select(0.0, t.margin, c == t.y);
        z[c] = zc;
        m = max(m, zc);
        z_sum += zc;
        z_y += select(0.0, zc, c == t.y);
    }
    var s = 0.0;
    for (var c = 0u; c < ROW_C; c++) {
        z[c] = exp(z[c] - m);
        s += z[c];
    }
    if (!valid) {
        return;
    }
    var l = 0.0;
    if (t.bad) {
        l = nan();
    } else if (!t.ignored) {
        l = row_loss_of(t, m + log(s), z_y, z_sum);
    }
    row_loss[row] = l;
    if ((params.flags & FLAG_WRITE_GRAD) == 0u) {
        return;
    }
    let scale = grad_scale(row, t);
    let inv_s = 1.0 / s;
    let fill = select(0.0, nan(), t.bad);
    let dead = t.bad || t.ignored;
    let q_other = params.smoothing / f32(ROW_C);
    let q_true = 1.0 - params.smoothing + q_other;
    for (var c = 0u; c < ROW_C; c++) {
        let g = select(scale * (z[c] * inv_s - select(q_other, q_true, c == t.y)), fill, dead);
        // The destination is fixed per entry point (see row_segments).
        if (in_place) {
            logits[base + c] = g;
        } else {
            grad[base + c] = g;
        }
    }
}

@compute @workgroup_size(WG_SIZE)
fn xent_row_unrolled(@builtin(global_invocation_id) gid: vec3<u32>) {
    row_unrolled(gid.x, false);
}

@compute @workgroup_size(WG_SIZE)
fn xent_row_unrolled_in_place(@builtin(global_invocation_id) gid: vec3<u32>) {
    row_unrolled(gid.x, true);
}
