// cpu_posthoc.wgsl: the post-hoc argmax (docs/MATH.md section 6) in the
// layouts for CPU adapters (lavapipe, llvmpipe) only; the host picks them
// only on an adapter that reports itself a CPU, and every GPU runs
// posthoc.wgsl. Same math and output as posthoc.wgsl's argmax:
//   g_tc    = f_ic - a_tc,   a_tc = f32(tau_t) * f32(log pi_c), the product
//             the host forms; argmax_windows16 and argmax_unrolled16 form it
//             here, kept from fusing into the subtraction (see `scaled16`)
//   pred_ti = argmax_c g_tc, ties to the smallest index (numpy's rule).
//
// Why layouts of their own: a CPU adapter runs a workgroup's threads as SIMD
// lanes, and a storage read whose address differs per lane is a loop over
// the lanes (about 22 instructions each on lavapipe), where a uniform read is
// a gather of a few. So the adjustments come from a 64 KiB uniform table,
// and a row is one thread.
//
// Memory traffic: 4 bytes read per logit, 4T bytes of predictions written
// per row; the windowed layouts keep a running (value, index) per tau in
// best_state between windows (8 * T4 bytes per row per window boundary).
//
// Layouts (64 threads, no workgroup memory, no barriers):
//   argmax_windows(16)    - one thread per row over a window of classes whose
//                           table fills the 64 KiB uniform buffer, one
//                           dispatch per window, the running argmax kept in
//                           best_state between windows. argmax_windows
//                           (T > 16): the table holds a_tc, W = 4096 / T4
//                           classes rounded down to a multiple of 4,
//                           T4 = ceil(T / 4). argmax_windows16 (T <= 16):
//                           the table holds f32(log pi_c), W = 16384
//                           classes, and the shader forms a_tc = f32(tau_t) *
//                           l itself (see `scaled16`): one gather per four
//                           classes instead of four per class. It keeps the
//                           16 taus in named registers (an indexed private
//                           array is slower on lavapipe) and from 2048 rows
//                           takes two rows per thread, so each product
//                           serves both. Scalar logit loads: vec4 loads took
//                           fewer instructions but more time on lavapipe.
//   argmax_unrolled16     - argmax_windows16 for C <= 32, T <= 16, with C a
//                           pipeline constant: straight-line code per class,
//                           one window, no state. It too forms a_tc from
//                           f32(log pi_c): lavapipe (Mesa 22.3) gathers a
//                           uniform read lane by lane even at a constant
//                           index, so 16 a_tc reads per class would cost 16
//                           gathers where log pi_c costs one.

struct Params {
    rows: u32,        // rows in this chunk
    classes: u32,     // C
    taus: u32,        // T (1..=64)
    slices: u32,      // unused here (posthoc.wgsl's row-per-group layout)
    tau_index: u32,   // unused here
    k: u32,           // unused here
    window_start: u32, // first class of this dispatch's window
    window_len: u32,   // classes per window
    opaque_zero: u32,  // always 0: see `scaled16`
    tau16: array<vec4<f32>, 4>, // T <= 16: f32(tau_t), 0-padded
}

const WG: u32 = 64u;
const MAX_TAU4: u32 = 16u;     // 64 taus at most, four per vec4

@group(0) @binding(0) var<uniform> params: Params;
// Caller buffers are read_write even where only read (wgpu tracks usage per
// buffer; regions of one pooled buffer bind together).
@group(0) @binding(1) var<storage, read_write> logits: array<f32>;
// pred[row * T + t]
@group(0) @binding(2) var<storage, read_write> pred: array<u32>;
// Each row's running (best value, best index) per tau between windows,
// [row][value bits x T4 | index x T4], T4 = 4 * ceil(T / 4) (u32
// throughout, so no value passes through float arithmetic).
@group(0) @binding(3) var<storage, read_write> best_state: array<u32>;
// The window table, bound at the window's offset. argmax_windows (T > 16):
// a_tc for this window's classes, [c - window_start][t] in vec4s of four
// taus (padded with 0). argmax_windows16 and argmax_unrolled16 (T <= 16):
// f32(log pi_c) at float [c - window_start], four classes per vec4.
@group(0) @binding(4) var<uniform> adjust_table: array<vec4<f32>, 4096>;
// The predictions as vec4s (argmax_unrolled16 with T % 4 == 0: a row's T
// predictions start on a vec4), bound to the same range as `pred`; a
// stand-in otherwise. One vec4 store costs lavapipe much less than four
// scalar ones.
@group(0) @binding(5) var<storage, read_write> pred4: array<vec4<u32>>;


// -inf, computed: Tint (Chrome's WGSL compiler) folds a constant infinity
// and rejects it, so the value depends on a uniform it cannot fold.
fn neg_inf() -> f32 {
    return bitcast<f32>(0xff800000u + min(params.rows, 0u));
}

// One thread per row over one window of classes, all taus at once, four per
// vec4: a_tc comes from a uniform buffer at an index every thread shares (a
// gather on lavapipe, see windows16, but not a loop over lanes). Plain float
// compares (a_tc is finite, so f - a keeps an infinite f infinite; -0 and +0
// compare equal); strict `>` keeps the earliest index on ties, and the
// initial -inf makes a row of -inf predict class 0. Windows after the first
// resume from best_state; the last writes the predictions. Traffic: 4 bytes
// per logit, 8 * T4 bytes of state per row per window boundary.
@compute @workgroup_size(WG)
fn argmax_windows(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row = gid.x;
    if (row >= params.rows) {
        return;
    }
    let t_len = params.taus;
    let t4 = (t_len + 3u) / 4u;
    let w0 = params.window_start;
    let w1 = min(w0 + params.window_len, params.classes);
    let state = row * 8u * t4;
    var best: array<vec4<f32>, MAX_TAU4>;
    var idx: array<vec4<u32>, MAX_TAU4>;
    for (var q = 0u; q < t4; q++) {
        if (w0 == 0u) {
            best[q] = vec4(neg_inf());
            idx[q] = vec4(0u);
        } else {
            let v = state + 4u * q;
            let i = state + 4u * (t4 + q);
            best[q] = bitcast<vec4<f32>>(vec4(best_state[v], best_state[v + 1u], best_state[v + 2u], best_state[v + 3u]));
            idx[q] = vec4(best_state[i], best_state[i + 1u], best_state[i + 2u], best_state[i + 3u]);
        }
    }
    let row_base = row * params.classes;
    for (var c = w0; c < w1; c++) {
        let f = vec4(logits[row_base + c]);
        let a_base = (c - w0) * t4;
        for (var q = 0u; q < t4; q++) {
            let g = f - adjust_table[a_base + q];
            let better = g > best[q];
            best[q] = select(best[q], g, better);
            idx[q] = select(idx[q], vec4(c), better);
        }
    }
    if (w1 == params.classes) {
        for (var q = 0u; q < t4; q++) {
            let t = 4u * q;
            let out = row * t_len + t;
            pred[out] = idx[q].x;
            if (t + 1u < t_len) {
                pred[out + 1u] = idx[q].y;
            }
            if (t + 2u < t_len) {
                pred[out + 2u] = idx[q].z;
            }
            if (t + 3u < t_len) {
                pred[out + 3u] = idx[q].w;
            }
        }
    } else {
        for (var q = 0u; q < t4; q++) {
            let v = state + 4u * q;
            let i = state + 4u * (t4 + q);
            let b = bitcast<vec4<u32>>(best[q]);
            let bi = idx[q];
            best_state[v] = b.x;
            best_state[v + 1u] = b.y;
            best_state[v + 2u] = b.z;
            best_state[v + 3u] = b.w;
            best_state[i] = bi.x;
            best_state[i + 1u] = bi.y;
            best_state[i + 2u] = bi.z;
            best_state[i + 3u] = bi.w;
        }
    }
}

// The argmax of four taus against one logit: f - a for each, the strict
// compare, the running best and its index.
struct Best4 {
    value: vec4<f32>,
    index: vec4<u32>,
}

fn fold4(b: Best4, f: f32, a: vec4<f32>, c: u32) -> Best4 {
    let g = vec4(f) - a;
    let better = g > b.value;
    return Best4(select(b.value, g, better), select(b.index, vec4(c), better));
}

fn load4(state: u32, q: u32, t4: u32) -> Best4 {
    let v = state + 4u * q;
    let i = state + 4u * (t4 + q);
    return Best4(
        bitcast<vec4<f32>>(vec4(best_state[v], best_state[v + 1u], best_state[v + 2u], best_state[v + 3u])),
        vec4(best_state[i], best_state[i + 1u], best_state[i + 2u], best_state[i + 3u]),
    );
}

fn store4(state: u32, q: u32, t4: u32, b: Best4) {
    let v = state + 4u * q;
    let i = state + 4u * (t4 + q);
    let bits = bitcast<vec4<u32>>(b.value);
    best_state[v] = bits.x;
    best_state[v + 1u] = bits.y;
    best_state[v + 2u] = bits.z;
    best_state[v + 3u] = bits.w;
    best_state[i] = b.index.x;
    best_state[i + 1u] = b.index.y;
    best_state[i + 2u] = b.index.z;
    best_state[i + 3u] = b.index.w;
}

fn write_pred4(row: u32, q: u32, b: Best4) {
    let t_len = params.taus;
    let t = 4u * q;
    let out = row * t_len + t;
    if (t < t_len) {
        pred[out] = b.index.x;
    }
    if (t + 1u < t_len) {
        pred[out + 1u] = b.index.y;
    }
    if (t + 2u < t_len) {
        pred[out + 2u] = b.index.z;
    }
    if (t + 3u < t_len) {
        pred[out + 3u] = b.index.w;
    }
}

// argmax_windows for T <= 16 with the four tau blocks in named registers
// rather than an indexed array (which lavapipe keeps in memory). Blocks past
// T4 compute on zero padding and are never written.
struct Best16 {
    b0: Best4,
    b1: Best4,
    b2: Best4,
    b3: Best4,
}

// The a_tc of one class for up to 16 taus, four per vec4 (see `scaled16`).
struct Adjust16 {
    a0: vec4<f32>,
    a1: vec4<f32>,
    a2: vec4<f32>,
    a3: vec4<f32>,
}

// The a_tc of one class for up to 16 taus, formed here from l = f32(log
// pi_c): f32(tau_t) * l, the product the host forms (posthoc::adjustments;
// an f32 multiply is correctly rounded). One gather of l per class instead
// of four vec4 gathers of a_tc, the larger part of this kernel's work on
// lavapipe. Each product goes through an xor with params.opaque_zero (0 at
// run time, unknown to the compiler) so that no compiler fuses it into the
// subtraction in fold4: an FMA would round once where the host rounds
// twice. Blocks past T4 multiply padding taus of 0 and are never written.
fn scaled16(l: f32) -> Adjust16 {
    let z = vec4(params.opaque_zero);
    return Adjust16(
        bitcast<vec4<f32>>(bitcast<vec4<u32>>(params.tau16[0] * l) ^ z),
        bitcast<vec4<f32>>(bitcast<vec4<u32>>(params.tau16[1] * l) ^ z),
        bitcast<vec4<f32>>(bitcast<vec4<u32>>(params.tau16[2] * l) ^ z),
        bitcast<vec4<f32>>(bitcast<vec4<u32>>(params.tau16[3] * l) ^ z),
    );
}

// Logit f of class c against the a_tc of that class.
fn fold16(b: Best16, f: f32, a: Adjust16, c: u32) -> Best16 {
    return Best16(fold4(b.b0, f, a.a0, c), fold4(b.b1, f, a.a1, c), fold4(b.b2, f, a.a2, c), fold4(b.b3, f, a.a3, c));
}

fn resume16(row: u32, t4: u32) -> Best16 {
    let lowest = Best4(vec4(neg_inf()), vec4(0u));
    var b = Best16(lowest, lowest, lowest, lowest);
    if (params.window_start != 0u) {
        let state = row * 8u * t4;
        b.b0 = load4(state, 0u, t4);
        if (t4 > 1u) {
            b.b1 = load4(state, 1u, t4);
        }
        if (t4 > 2u) {
            b.b2 = load4(state, 2u, t4);
        }
        if (t4 > 3u) {
            b.b3 = load4(state, 3u, t4);
        }
    }
    return b;
}

fn finish16(row: u32, t4: u32, b: Best16) {
    if (min(params.window_start + params.window_len, params.classes) == params.classes) {
        write_pred4(row, 0u, b.b0);
        write_pred4(row, 1u, b.b1);
        write_pred4(row, 2u, b.b2);
        write_pred4(row, 3u, b.b3);
    } else {
        let state = row * 8u * t4;
        store4(state, 0u, t4, b.b0);
        if (t4 > 1u) {
            store4(state, 1u, t4, b.b1);
        }
        if (t4 > 2u) {
            store4(state, 2u, t4, b.b2);
        }
        if (t4 > 3u) {
            store4(state, 3u, t4, b.b3);
        }
    }
}

// Class c, with l = f32(log pi_c), folded into one row's running argmax or,
// with `pairs`, into two rows' (the rows at base0 and base1).
fn class16(b0: ptr<function, Best16>, b1: ptr<function, Best16>, pairs: bool, base0: u32, base1: u32, c: u32, l: f32) {
    let a = scaled16(l);
    *b0 = fold16(*b0, logits[base0 + c], a, c);
    if (pairs) {
        *b1 = fold16(*b1, logits[base1 + c], a, c);
    }
}

// With `pairs`, two rows per thread (rows 2g and 2g + 1): each table vec4
// and each class's 16 products serve both. lavapipe gathers every uniform
// read lane by lane (Mesa 22.3), so the shared read and products are a
// real saving. `pairs` is fixed per entry point, so the unused path
// compiles away. The host pairs rows only from 2048 rows: with fewer,
// halving the threads costs more than it saves.
fn windows16(g: u32, pairs: bool) {
    let r0 = select(g, 2u * g, pairs);
    if (r0 >= params.rows) {
        return;
    }
    let second = pairs && r0 + 1u < params.rows;
    // A lone last row computes twice and is written once.
    let r1 = select(r0, r0 + 1u, second);
    let t4 = (params.taus + 3u) / 4u;
    let w0 = params.window_start;
    let w1 = min(w0 + params.window_len, params.classes);
    var b0 = resume16(r0, t4);
    var b1 = b0;
    if (pairs) {
        b1 = resume16(r1, t4);
    }
    let base0 = r0 * params.classes;
    let base1 = r1 * params.classes;
    // Four classes per trip, their l from one vec4 of the table (windows
    // start on multiples of 4); the last partial vec4 after the loop.
    var c = w0;
    for (; c + 4u <= w1; c += 4u) {
        let l = adjust_table[(c - w0) >> 2u];
        class16(&b0, &b1, pairs, base0, base1, c, l.x);
        class16(&b0, &b1, pairs, base0, base1, c + 1u, l.y);
        class16(&b0, &b1, pairs, base0, base1, c + 2u, l.z);
        class16(&b0, &b1, pairs, base0, base1, c + 3u, l.w);
    }
    if (c < w1) {
        let l = adjust_table[(c - w0) >> 2u];
        class16(&b0, &b1, pairs, base0, base1, c, l.x);
        if (c + 1u < w1) {
            class16(&b0, &b1, pairs, base0, base1, c + 1u, l.y);
        }
        if (c + 2u < w1) {
            class16(&b0, &b1, pairs, base0, base1, c + 2u, l.z);
        }
    }
    finish16(r0, t4, b0);
    if (second) {
        finish16(r1, t4, b1);
    }
}

@compute @workgroup_size(WG)
fn argmax_windows16(@builtin(global_invocation_id) gid: vec3<u32>) {
    windows16(gid.x, false);
}

@compute @workgroup_size(WG)
fn argmax_windows16_pairs(@builtin(global_invocation_id) gid: vec3<u32>) {
    windows16(gid.x, true);
}

// argmax_windows16 for small C: C (POST_C <= 32) is a pipeline constant and
// the classes are straight-line code: no loop, one thread per row, a single
// window (the table's first vec4s hold f32(log pi_c)), no state. Traffic as
// argmax_windows16: 4 bytes read per logit, 4T written per row.
override POST_C: u32 = 1u;
// Store the predictions through pred4 (T % 4 == 0).
override POST_VEC4_OUT: bool = false;

// Class k of the row at `base`, for k < POST_C (a constant after inlining).
fn unrolled_class(b: ptr<function, Best16>, base: u32, k: u32) {
    if (k < POST_C) {
        *b = fold16(*b, logits[base + k], scaled16(adjust_table[k / 4u][k % 4u]), k);
    }
}

@compute @workgroup_size(WG)
fn argmax_unrolled16(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row = gid.x;
    if (row >= params.rows) {
        return;
    }
    let lowest = Best4(vec4(neg_inf()), vec4(0u));
    var b = Best16(lowest, lowest, lowest, lowest);
    let base = row * POST_C;
    // Straight-line calls, not a loop: Mesa's NIR left a loop over C rolled
    // (its body is large), and then the a_tc index was a loop counter again.
    // Calls past C compile away.
    unrolled_class(&b, base, 0u);
    unrolled_class(&b, base, 1u);
    unrolled_class(&b, base, 2u);
    unrolled_class(&b, base, 3u);
    unrolled_class(&b, base, 4u);
    unrolled_class(&b, base, 5u);
    unrolled_class(&b, base, 6u);
    unrolled_class(&b, base, 7u);
    unrolled_class(&b, base, 8u);
    unrolled_class(&b, base, 9u);
    unrolled_class(&b, base, 10u);
    unrolled_class(&b, base, 11u);
    unrolled_class(&b, base, 12u);
    unrolled_class(&b, base, 13u);
    unrolled_class(&b, base, 14u);
    unrolled_class(&b, base, 15u);
    unrolled_class(&b, base, 16u);
    unrolled_class(&b, base, 17u);
    unrolled_class(&b, base, 18u);
    unrolled_class(&b, base, 19u);
    unrolled_class(&b, base, 20u);
    unrolled_class(&b, base, 21u);
    unrolled_class(&b, base, 22u);
    unrolled_class(&b, base, 23u);
    unrolled_class(&b, base, 24u);
    unrolled_class(&b, base, 25u);
    unrolled_class(&b, base, 26u);
    unrolled_class(&b, base, 27u);
    unrolled_class(&b, base, 28u);
    unrolled_class(&b, base, 29u);
    unrolled_class(&b, base, 30u);
    unrolled_class(&b, base, 31u);
    if (POST_VEC4_OUT) {
        let t4 = params.taus / 4u;
        let out = row * t4;
        pred4[out] = b.b0.index;
        if (t4 > 1u) {
            pred4[out + 1u] = b.b1.index;
        }
        if (t4 > 2u) {
            pred4[out + 2u] = b.b2.index;
        }
        if (t4 > 3u) {
            pred4[out + 3u] = b.b3.index;
        }
    } else {
        write_pred4(row, 0u, b.b0);
        write_pred4(row, 1u, b.b1);
        write_pred4(row, 2u, b.b2);
        write_pred4(row, 3u, b.b3);
    }
}
