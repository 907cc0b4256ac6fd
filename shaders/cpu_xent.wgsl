// cpu_xent.wgsl: the logit-adjusted softmax cross-entropy, forward alone or
// fused with its backward, in a layout for CPU adapters (lavapipe,
// llvmpipe) only. The host's plan picks it only on an adapter that reports
// itself a CPU; every GPU runs softmax_xent.wgsl, whose xent_rows computes
// the same thing with the same parameters and bindings (docs/MATH.md
// sections 1-5):
//   z_c  = f_c + b_c - m_y [c == y]
//   LSE  = M + log S,  M = max_c z_c,  S = sum_c exp(z_c - M)
//   l_i  = alpha_y ((1 - eps)(LSE - z_y) + eps (LSE - mean_c z_c))
//   dl/df_c = scale_i alpha_y (p_c - q_c),  p_c = exp(z_c - M) / S
//   q_c  = (1 - eps)[c == y] + eps / C,     scale_i = g_i / denom
//
// Why a layout of its own: a CPU adapter runs a workgroup's threads as the
// lanes of SIMD registers, and a storage access whose address differs per
// lane becomes a loop over the lanes. Here every access to the logits, the
// gradient and b is a whole vec4, so that loop is paid once per four
// floats; and each thread walks one contiguous stretch of its row.
//
// xent_segments: P threads per row (a power of two dividing WG), WG / P
// rows per workgroup. A row's elements [base, base + C) touch the vec4s
// q0 = base / 4 .. q_end = (base + C + 3) / 4 of the binding; thread `lane`
// takes vec4s [q0 + lane * L4, ..) of them, at most L4 (<= L4_MAX), and
// holds them in a private array between its two passes. A row starts
// inside a vec4 when the stride is not a multiple of 4 (SHIFTED): then b
// is shifted to match, component j of vec4 u being class 4u + j - base
// (which wraps past C below the row's start, so the `< C` mask rejects the
// neighbour's elements).
//
// xent_row_groups: for short packed rows (stride == C <= C_MAX, b from the
// uniform table), a thread
// takes ROW_R = 4 / gcd(C, 4) consecutive rows, whose ROW_R * C floats start
// on a 16-byte boundary and fill whole vec4s: it reads them as vec4s, runs
// each row with C and ROW_R pipeline constants (every loop unrolls, every
// index is a constant, so the rows stay in registers), and writes the
// gradient back as whole vec4s. The host uses it only when every chunk's
// row count is a multiple of ROW_R, so no vec4 holds a row of another
// thread or a row past the chunk. No workgroup memory, no barriers.
//
// f16 and bf16 logits (and gradient): the loader swaps
// blocks/cpu_xent_formats.wgsl's for the f32 blocks between the
// `>>> logits`/`<<< logits` and `>>> grad`/`<<< grad` lines. A vec4 of the
// views is then 4 packed halves, two u32 words (so every index below is the
// same), widened on load; a gradient vec4 is rounded once, to nearest even,
// on store: one vec2<u32> store when the stride is even (no word holds two
// rows), else whole words by atomicStore and the halves of a word a row
// shares with its neighbour by atomicAnd/atomicOr (that file's header).
//
// Memory traffic per element: reads 4 bytes (2 for halves), writes 4 (2) (fused); per row up
// to two vec4s shared with the neighbouring rows are read twice, and b
// (C floats, cached across rows) once per vec4. Per row: the label, b, m,
// alpha of its class, 4 bytes of loss and 4 of LSE.
//
// Writes: only the row's own components. The vec4s wholly inside the row
// are stored whole; the first and last vec4 of a row that shares them with
// its neighbours are stored component by component, out of the loop (a
// branch in the loop would run both sides on a CPU adapter). In place, the
// gradient binding is the logits' own region: a thread reads every vec4 it
// writes before the write, and a neighbour that reads a shared vec4 after
// the write masks the components that changed.
//
// Barriers: for P > 1 the row's P partials meet in a workgroup-memory tree,
// one barrier per level (a level's writes complete before the next reads
// them) and one before the total is read. P is a pipeline constant, and
// every thread, live or not, reaches the tree, so the barriers sit in
// uniform control flow; the loops before it have per-thread trip counts but
// no barrier.

struct Params {
    rows: u32,          // rows bound in this chunk
    classes: u32,       // C
    stride: u32,        // elements between row starts
    flags: u32,         // FLAG_* below
    ignore_lo: i32,     // ignore_index, low and high words (high: i64 labels)
    ignore_hi: i32,
    smoothing: f32,     // eps in [0, 1)
    span: u32,          // unused here (softmax_xent.wgsl's split layout)
    chunks: u32,
    _pad: u32,
    split_base: u32,
    norm_base: u32,
}

const FLAG_UPSTREAM_SCALAR: u32 = 1u;   // one g in upstream[0]
const FLAG_UPSTREAM_PER_ROW: u32 = 2u;  // g_i in upstream[i]; neither flag: g = 1
const FLAG_ROW_LOSS: u32 = 4u;          // write l_i
const FLAG_LSE: u32 = 8u;               // write LSE_i

// Word 0 of `work`: denom, from loss_reduce.wgsl's normalizer.
const WORK_DENOM: u32 = 0u;

const LOWEST: f32 = -0x1.fffffep+127f;
const L4_MAX: u32 = 128u;
const C_MAX: u32 = 32u;
const TABLE_VEC4S: u32 = 4096u;

override WG: u32 = 64u;           // threads per workgroup
override P: u32 = 1u;             // threads per row, a power of two dividing WG
override L4: u32 = 1u;            // vec4s per thread at most, <= L4_MAX
override WRITE_GRAD: bool = true; // fused forward+backward, else forward only
override SHIFTED: bool = true;    // rows may start inside a vec4 (stride % 4 != 0)
override LABEL_KIND: u32 = 0u;    // 0 i32, 1 u32, 2 i64
override TABLE: bool = false;     // b from the uniform table (C <= 16,384)
override TABLE_ALL: bool = false; // m and alpha too (3C <= 16,384)
override ROW_C: u32 = 1u;         // xent_row_groups: C, <= C_MAX
override ROW_R: u32 = 1u;         // xent_row_groups: rows per thread, 4 / gcd(C, 4)

@group(0) @binding(0) var<uniform> params: Params;
// Caller buffers are read_write even where only read, as in
// softmax_xent.wgsl (wgpu tracks usage per buffer).
// >>> logits
@group(0) @binding(1) var<storage, read_write> logits: array<vec4<f32>>;

// Vec4 u of the logits' view: elements 4u .. 4u + 3.
fn load4(u: u32) -> vec4<f32> {
    return logits[u];
}
// <<< logits
@group(0) @binding(2) var<storage, read_write> labels: array<i32>;
// [b_0..b_{C-1}, m_0..m_{C-1}, alpha_0..alpha_{C-1}], zero-padded to vec4s.
@group(0) @binding(3) var<storage, read> class_vecs: array<vec4<f32>>;
// >>> grad
@group(0) @binding(4) var<storage, read_write> grad: array<vec4<f32>>;

// Vec4 u of the gradient, whole.
fn store4(u: u32, g: vec4<f32>) {
    grad[u] = g;
}

// The components `w` of vec4 u alone: the others are a neighbour row's.
fn store_part(u: u32, g: vec4<f32>, w: vec4<bool>) {
    if (w.x) {
        grad[u].x = g.x;
    }
    if (w.y) {
        grad[u].y = g.y;
    }
    if (w.z) {
        grad[u].z = g.z;
    }
    if (w.w) {
        grad[u].w = g.w;
    }
}
// <<< grad
@group(0) @binding(5) var<storage, read_write> row_loss: array<f32>;
@group(0) @binding(6) var<storage, read_write> lse: array<f32>;
@group(0) @binding(7) var<storage, read_write> work: array<f32>;
@group(0) @binding(8) var<storage, read_write> upstream: array<f32>;
// The first 16,384 floats of class_vecs again, zero-padded: b when
// C <= 16,384 (TABLE), and m and alpha too when 3C <= 16,384 (TABLE_ALL). On
// a CPU adapter a uniform read is a gather or, at an index the same for
// every lane, one broadcast load; a storage read is a loop over the lanes.
@group(0) @binding(9) var<uniform> bias: array<vec4<f32>, TABLE_VEC4S>;

var<workgroup> tree: array<vec4<f32>, WG>;

fn nan() -> f32 {
    return bitcast<f32>(0x7fc00000u + min(params.rows, 0u));
}

fn class_vec(i: u32) -> f32 {
    if (TABLE_ALL) {
        return bias[i / 4u][i % 4u];
    }
    return class_vecs[i / 4u][i % 4u];
}

// What a row needs to know about its label.
struct Target {
    y: u32,        // C when no class is the label (ignored or bad)
    margin: f32,   // m_y
    alpha: f32,    // alpha_y
    ignored: bool,
    bad: bool,     // neither in [0, C) nor ignored: NaN row, counted by the normalizer
}

fn target_of(row: u32) -> Target {
    let c = params.classes;
    var t: Target;
    var lo: i32;
    var in_range: bool;
    if (LABEL_KIND == 2u) {
        lo = labels[2u * row];
        let hi = labels[2u * row + 1u];
        t.ignored = lo == params.ignore_lo && hi == params.ignore_hi;
        in_range = hi == 0 && lo >= 0 && u32(lo) < c;
    } else if (LABEL_KIND == 1u) {
        lo = labels[row];
        t.ignored = lo == params.ignore_lo && params.ignore_hi == 0 && params.ignore_lo >= 0;
        in_range = u32(lo) < c;
    } else {
        lo = labels[row];
        t.ignored = lo == params.ignore_lo && params.ignore_hi == (lo >> 31u);
        in_range = lo >= 0 && u32(lo) < c;
    }
    t.bad = !t.ignored && !in_range;
    let valid = in_range && !t.ignored;
    t.y = select(c, u32(lo), valid);
    let y = min(t.y, c - 1u);
    t.margin = select(0.0, class_vec(c + y), valid);
    t.alpha = class_vec(2u * c + y);
    return t;
}

// Merge two partials (max, sum of exp relative to that max over the
// classes other than the label, sum of z, z_y). As in softmax_xent.wgsl,
// the label's own term stays out of the sum so that 1 - p_y = (S - e_y) / S
// is a sum, not a difference that cancels near p_y = 1.
fn merge(a: vec4<f32>, b: vec4<f32>) -> vec4<f32> {
    let m = max(a.x, b.x);
    let s = a.y * exp(a.x - m) + b.y * exp(b.x - m);
    return vec4<f32>(m, s, a.z + b.z, a.w + b.w);
}

// S = sum_c exp(z_c - M) of a merged partial: the others' sum plus the
// label's term (none for an ignored or bad row, whose y is C).
fn row_sum(t: Target, total: vec4<f32>) -> f32 {
    return total.y + select(0.0, exp(total.w - total.x), t.y < params.classes);
}

fn row_loss_of(t: Target, total: vec4<f32>) -> f32 {
    let eps = params.smoothing;
    let log_z = total.x + log(row_sum(t, total));
    let mean_z = total.z / f32(params.classes);
    let l = t.alpha * ((1.0 - eps) * (log_z - total.w) + eps * (log_z - mean_z));
    return select(select(l, 0.0, t.ignored), nan(), t.bad);
}

// scale_i alpha_y: 0 for ignored rows, NaN for bad ones.
fn grad_scale(row: u32, t: Target) -> f32 {
    let denom = work[WORK_DENOM];
    var g = 1.0;
    if ((params.flags & FLAG_UPSTREAM_SCALAR) != 0u) {
        g = upstream[0];
    } else if ((params.flags & FLAG_UPSTREAM_PER_ROW) != 0u) {
        g = upstream[row];
    }
    let scale = select(t.alpha * g / denom, 0.0, t.ignored || denom == 0.0);
    return select(scale, nan(), t.bad);
}

// Tree over groups of `width` adjacent threads (a power of two): afterwards
// tree[first thread of the group] holds the group's merged partial.
fn tree_merge(lid: u32, width: u32, mine: vec4<f32>) {
    tree[lid] = mine;
    for (var half = width / 2u; half > 0u; half = half / 2u) {
        workgroupBarrier();
        if ((lid % width) < half) {
            tree[lid] = merge(tree[lid], tree[lid + half]);
        }
    }
    workgroupBarrier();
}

// b of table vec4 k (classes 4k .. 4k + 3), clamped to b's last vec4: the
// classes past C are masked by the caller.
fn b4(k: u32) -> vec4<f32> {
    if (TABLE) {
        return bias[min(k, TABLE_VEC4S - 1u)];
    }
    return class_vecs[min(k, (params.classes - 1u) / 4u)];
}

// hi moved up by s components, with lo's last s components below it.
fn shift_in(lo: vec4<f32>, hi: vec4<f32>, s: u32) -> vec4<f32> {
    var v = hi;
    v = select(v, vec4(lo.w, hi.x, hi.y, hi.z), s == 1u);
    v = select(v, vec4(lo.z, lo.w, hi.x, hi.y), s == 2u);
    return select(v, vec4(lo.y, lo.z, lo.w, hi.x), s == 3u);
}

// Classes of the four components of vec4 u of a row starting at `base`
// (wrapping past C before the row's start).
fn classes_of(u: u32, base: u32) -> vec4<u32> {
    return vec4<u32>(4u * u) + vec4<u32>(0u, 1u, 2u, 3u) - vec4<u32>(base);
}

@compute @workgroup_size(WG)
fn xent_segments(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    // Row blocks run along y, folded into z past 65,535 workgroups.
    let row = (wid.y + wid.z * nwg.y) * (WG / P) + lid / P;
    let lane = lid % P;
    let live = row < params.rows;
    let label = target_of(select(0u, row, live));
    let c_len = params.classes;
    let base = select(0u, row * params.stride, live);
    let s = base % 4u;
    let q0 = base / 4u;
    let q_end = (base + c_len + 3u) / 4u;
    let ua = min(q0 + lane * L4, q_end);
    let trips = select(0u, min(ua + L4, q_end) - ua, live);
    let y4 = vec4<u32>(label.y);
    let margin4 = vec4<f32>(label.margin);

    // Pass 1: z, its max, sum and z_y, with z kept (LOWEST where masked).
    // The loops run L4 trips, a pipeline constant, masking those past the
    // thread's `trips`: for short rows the compiler unrolls them and keeps
    // `e` in registers, where an array indexed at run time lives in memory.
    var e: array<vec4<f32>, L4_MAX>;
    var m4 = vec4<f32>(LOWEST);
    var zs4 = vec4<f32>(0.0);
    var zy4 = vec4<f32>(0.0);
    let kq = ua - q0;
    let u_last = max(q_end, 1u) - 1u;
    var b_lo = b4(max(kq, 1u) - 1u);
    for (var k = 0u; k < L4; k++) {
        let cs = classes_of(ua + k, base);
        let inside = (cs < vec4<u32>(c_len)) & vec4<bool>(k < trips);
        let b_hi = b4(kq + k);
        var b = b_hi;
        if (SHIFTED) {
            b = shift_in(b_lo, b_hi, s);
            b_lo = b_hi;
        }
        let is_y = cs == y4;
        // Clamped to the row's last vec4: a masked trip reads nothing new.
        let z = load4(min(ua + k, u_last)) + b - select(vec4<f32>(0.0), margin4, is_y);
        let zm = select(vec4<f32>(LOWEST), z, inside);
        m4 = max(m4, zm);
        zs4 += select(vec4<f32>(0.0), z, inside);
        zy4 += select(vec4<f32>(0.0), z, inside & is_y);
        e[k] = zm;
    }
    let m = max(max(m4.x, m4.y), max(m4.z, m4.w));
    // Pass 2: one exp per element serves the sum (the label's left out)
    // and the gradient.
    var s4 = vec4<f32>(0.0);
    for (var k = 0u; k < L4; k++) {
        let cs = classes_of(ua + k, base);
        let inside = (cs < vec4<u32>(c_len)) & vec4<bool>(k < trips);
        let ex = select(vec4<f32>(0.0), exp(e[k] - vec4<f32>(m)), inside);
        e[k] = ex;
        s4 += select(ex, vec4<f32>(0.0), cs == y4);
    }
    var total = vec4<f32>(m, s4.x + s4.y + s4.z + s4.w,
                          zs4.x + zs4.y + zs4.z + zs4.w, zy4.x + zy4.y + zy4.z + zy4.w);
    if (P > 1u) {
        tree_merge(lid, P, total);
        total = tree[lid - lane];
    }
    if (!live) {
        return;
    }
    if (lane == 0u) {
        if ((params.flags & FLAG_ROW_LOSS) != 0u) {
            row_loss[row] = row_loss_of(label, total);
        }
        if ((params.flags & FLAG_LSE) != 0u) {
            lse[row] = total.x + log(row_sum(label, total));
        }
    }
    if (!WRITE_GRAD) {
        return;
    }
    // p_c = exp(z_c - m) exp(m - M) / S; at the label p_y - q_y is
    // (p_y - 1) + eps - eps / C with p_y - 1 = -(S - e_y) / S.
    let s_all = row_sum(label, total);
    let to_p = exp(m - total.x) / s_all;
    let scale = grad_scale(row, label);
    let eps = params.smoothing;
    let q_rest = vec4<f32>(eps / f32(c_len));
    let at_y = vec4<f32>(-total.y / s_all + eps) - q_rest;
    let ub = ua + trips;
    // The vec4s wholly inside the row, [qa, qb), stored whole.
    let qa = (base + 3u) / 4u;
    let qb = (base + c_len) / 4u;
    let ka = clamp(qa, ua, ub) - ua;
    let kb = clamp(qb, ua, ub) - ua;
    for (var k = 0u; k < L4; k++) {
        if (k >= ka && k < kb) {
            let is_y = classes_of(ua + k, base) == y4;
            store4(ua + k, scale * select(e[k] * to_p - q_rest, at_y, is_y));
        }
    }
    // The row's first vec4 when the row starts inside it, and its last when
    // the row ends inside it (once, when both are one vec4).
    let first_part = s != 0u && q0 >= ua && q0 < ub;
    let last_part = qb < q_end && qb >= ua && qb < ub && !(s != 0u && qb == q0);
    for (var n = 0u; n < 2u; n++) {
        let u = select(qb, q0, n == 0u);
        if ((n == 0u && first_part) || (n == 1u && last_part)) {
            let cs = classes_of(u, base);
            let g = scale * select(e[u - ua] * to_p - q_rest, at_y, cs == y4);
            store_part(u, g, cs < vec4<u32>(c_len));
        }
    }
}

// Row r of a thread's rows, floats r * ROW_C .. of x: its loss and LSE,
// and (WRITE_GRAD) its gradient over its logits in x.
fn row_in_floats(x: ptr<function, array<f32, C_MAX>>, row: u32, r: u32) {
    let label = target_of(row);
    var m = LOWEST;
    var z_sum = 0.0;
    var z_y = 0.0;
    for (var c = 0u; c < ROW_C; c++) {
        let i = r * ROW_C + c;
        let zc = (*x)[i] + bias[c / 4u][c % 4u] - select(0.0, label.margin, c == label.y);
        (*x)[i] = zc;
        m = max(m, zc);
        z_sum += zc;
        z_y += select(0.0, zc, c == label.y);
    }
    // The others' sum (the label's term apart, see merge).
    var s = 0.0;
    for (var c = 0u; c < ROW_C; c++) {
        let i = r * ROW_C + c;
        (*x)[i] = exp((*x)[i] - m);
        s += select((*x)[i], 0.0, c == label.y);
    }
    let total = vec4<f32>(m, s, z_sum, z_y);
    let s_all = row_sum(label, total);
    if ((params.flags & FLAG_ROW_LOSS) != 0u) {
        row_loss[row] = row_loss_of(label, total);
    }
    if ((params.flags & FLAG_LSE) != 0u) {
        lse[row] = m + log(s_all);
    }
    if (WRITE_GRAD) {
        let scale = grad_scale(row, label);
        let eps = params.smoothing;
        let q_rest = eps / f32(ROW_C);
        let inv_s = 1.0 / s_all;
        let at_y = -s * inv_s + eps - q_rest;
        for (var c = 0u; c < ROW_C; c++) {
            let i = r * ROW_C + c;
            (*x)[i] = scale * select((*x)[i] * inv_s - q_rest, at_y, c == label.y);
        }
    }
}

@compute @workgroup_size(WG)
fn xent_row_groups(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let first = ((wid.y + wid.z * nwg.y) * WG + lid) * ROW_R;
    if (first >= params.rows) {
        return;
    }
    let nv = ROW_R * ROW_C / 4u;
    let base4 = first * ROW_C / 4u;
    var x: array<f32, C_MAX>;
    for (var j = 0u; j < nv; j++) {
        let v = load4(base4 + j);
        x[4u * j] = v.x;
        x[4u * j + 1u] = v.y;
        x[4u * j + 2u] = v.z;
        x[4u * j + 3u] = v.w;
    }
    for (var r = 0u; r < ROW_R; r++) {
        row_in_floats(&x, first + r, r);
    }
    if (WRITE_GRAD) {
        for (var j = 0u; j < nv; j++) {
            store4(base4 + j, vec4<f32>(x[4u * j], x[4u * j + 1u], x[4u * j + 2u], x[4u * j + 3u]));
        }
    }
}
