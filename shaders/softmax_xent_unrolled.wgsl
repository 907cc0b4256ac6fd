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

// One row's math with the row in z (ROW_C values, constant indices once the
// loops unroll): on entry its logits, on return its gradient (when
// write_grad); row_loss[row] is written when `valid`. Shared by both forms.
fn row_in_registers(z: ptr<function, array<f32, ROW_C_MAX>>, row: u32, valid: bool, write_grad: bool) {
    let t = target_from_table(labels[row], true);
    var m = LOWEST;
    var z_sum = 0.0;
    var z_y = 0.0;
    for (var c = 0u; c < ROW_C; c++) {
        let zc = (*z)[c] + bias_table[c / 4u][c % 4u] - select(0.0, t.margin, c == t.y);
        (*z)[c] = zc;
        m = max(m, zc);
        z_sum += zc;
        z_y += select(0.0, zc, c == t.y);
    }
    var s = 0.0;
    for (var c = 0u; c < ROW_C; c++) {
        (*z)[c] = exp((*z)[c] - m);
        s += (*z)[c];
    }
    var l = 0.0;
    if (t.bad) {
        l = nan();
    } else if (!t.ignored) {
        l = row_loss_of(t, m + log(s), z_y, z_sum);
    }
    if (valid) {
        row_loss[row] = l;
    }
    if (!write_grad) {
        return;
    }
    let scale = grad_scale(row, t);
    let inv_s = 1.0 / s;
    let fill = select(0.0, nan(), t.bad);
    let dead = t.bad || t.ignored;
    let q_other = params.smoothing / f32(ROW_C);
    let q_true = 1.0 - params.smoothing + q_other;
    for (var c = 0u; c < ROW_C; c++) {
        (*z)[c] = select(scale * ((*z)[c] * inv_s - select(q_other, q_true, c == t.y)), fill, dead);
    }
}

fn row_unrolled(row_unclamped: u32, in_place: bool, write_grad: bool) {
    let valid = row_unclamped < params.rows;
    let row = min(row_unclamped, params.rows - 1u);
    let base = row * ROW_C;
    var z: array<f32, ROW_C_MAX>;
    for (var c = 0u; c < ROW_C; c++) {
        z[c] = logits[base + c];
    }
    row_in_registers(&z, row, valid, write_grad);
    if (!valid || !write_grad || (params.flags & FLAG_WRITE_GRAD) == 0u) {
        return;
    }
    for (var c = 0u; c < ROW_C; c++) {
        // The destination is fixed per entry point (see row_segments).
        if (in_place) {
            logits[base + c] = z[c];
        } else {
            grad[base + c] = z[c];
        }
    }
}

@compute @workgroup_size(WG_SIZE)
fn xent_row_unrolled(@builtin(global_invocation_id) gid: vec3<u32>) {
    row_unrolled(gid.x, false, true);
}

@compute @workgroup_size(WG_SIZE)
fn xent_row_unrolled_in_place(@builtin(global_invocation_id) gid: vec3<u32>) {
    row_unrolled(gid.x, true, true);
}

// The forward alone (no gradient): its own entry, so the gradient code is
// compiled away rather than run under a mask (lavapipe runs both sides of a
// branch on a uniform flag).
@compute @workgroup_size(WG_SIZE)
fn xent_row_unrolled_forward(@builtin(global_invocation_id) gid: vec3<u32>) {
    row_unrolled(gid.x, false, false);
}

// The vec4 form (xent_rows_unrolled4): each thread takes R = 4 / gcd(C, 4)
// consecutive rows (ROW_R, a pipeline constant), whose R * C logits start on
// a 16-byte boundary and fill R * C / 4 whole vec4s. They are read and the
// gradient written through the vec4 views (bindings 10, 11), so every access
// is a whole vec4: lavapipe pays its per-lane loop once per four floats, not
// once per float (at 262144 x 10: 22 instructions per lane per float for a
// scalar access). The host picks it only when every chunk holds a multiple
// of R rows (N * C % 4 == 0 per chunk), so no vec4 straddles the end of a
// view (and only up to R * C = 20, see ROW_V_MAX). The same math per row
// as the scalar form (row_in_registers); the rows are handled by
// straight-line calls with constant r, so every index into v is a constant
// after inlining and unrolling, and v stays in registers.
override ROW_R: u32 = 1u;       // rows per thread: 1, 2 or 4
// R * C / 4 <= 5 vec4s per thread: the host stops at R * C = 20, past which
// lavapipe spilled v and the scalar form was twice as fast (C = 31, 32).
const ROW_V_MAX: u32 = 5u;

fn row_in_vec4s(v: ptr<function, array<vec4<f32>, ROW_V_MAX>>, row: u32, r: u32, valid: bool, write_grad: bool) {
    var z: array<f32, ROW_C_MAX>;
    for (var c = 0u; c < ROW_C; c++) {
        let e = r * ROW_C + c;
        z[c] = (*v)[e / 4u][e % 4u];
    }
    row_in_registers(&z, row, valid, write_grad);
    if (!write_grad) {
        return;
    }
    for (var c = 0u; c < ROW_C; c++) {
        let e = r * ROW_C + c;
        (*v)[e / 4u][e % 4u] = z[c];
    }
}

fn rows_unrolled4(group_unclamped: u32, in_place: bool, write_grad: bool) {
    let groups = params.rows / ROW_R;
    let valid = group_unclamped < groups;
    let first = min(group_unclamped, groups - 1u) * ROW_R;
    let base4 = first * ROW_C / 4u;
    var v: array<vec4<f32>, ROW_V_MAX>;
    for (var j = 0u; j < ROW_R * ROW_C / 4u; j++) {
        v[j] = logits4[base4 + j];
    }
    row_in_vec4s(&v, first, 0u, valid, write_grad);
    if (ROW_R > 1u) {
        row_in_vec4s(&v, first + 1u, 1u, valid, write_grad);
    }
    if (ROW_R > 2u) {
        row_in_vec4s(&v, first + 2u, 2u, valid, write_grad);
        row_in_vec4s(&v, first + 3u, 3u, valid, write_grad);
    }
    if (!write_grad || !valid || (params.flags & FLAG_WRITE_GRAD) == 0u) {
        return;
    }
    for (var j = 0u; j < ROW_R * ROW_C / 4u; j++) {
        // The destination is fixed per entry point (see row_segments).
        if (in_place) {
            logits4[base4 + j] = v[j];
        } else {
            grad4[base4 + j] = v[j];
        }
    }
}

@compute @workgroup_size(WG_SIZE)
fn xent_rows_unrolled4(@builtin(global_invocation_id) gid: vec3<u32>) {
    rows_unrolled4(gid.x, false, true);
}

@compute @workgroup_size(WG_SIZE)
fn xent_rows_unrolled4_in_place(@builtin(global_invocation_id) gid: vec3<u32>) {
    rows_unrolled4(gid.x, true, true);
}

@compute @workgroup_size(WG_SIZE)
fn xent_rows_unrolled4_forward(@builtin(global_invocation_id) gid: vec3<u32>) {
    rows_unrolled4(gid.x, false, false);
}
