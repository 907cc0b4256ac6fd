// posthoc.wgsl: batched post-hoc logit adjustment (docs/MATH.md section 6).
//
// Math, for row i and each of T values tau_t:
//   g_tc    = f_ic - a_tc,   a_tc = f32(tau_t) * f32(log pi_c), multiplied
//             in f32 by the host (posthoc::adjustments), so the GPU and the
//             CPU reference subtract the same f32 numbers
//   pred_ti = argmax_c g_tc, ties to the smallest index (numpy's rule).
// Comparisons run on order-preserving u32 keys of the f32 bits, so +-inf
// logits order correctly without relying on float compares of infinities;
// an infinite logit stays infinite whatever a_tc is. NaN logits are refused
// by the host.
//
// Memory traffic: each logit is read from memory once for all T taus
// (4 bytes per element, 2 for f16 and bf16, whose corrected logits are
// written as f32); the T x C adjustments are shared by every row and
// stay in cache; 4*T bytes of predictions are written per row, laid out
// [row][t] so row chunks stay contiguous. `corrected` reads each logit once
// and writes it once.
//
// Workgroup layouts (64 threads); CPU adapters run the argmax from
// cpu_posthoc.wgsl instead:
//   argmax_row_per_thread - one thread per row, all T taus updated from each
//                           register-held logit; T a pipeline constant, so
//                           the per-tau state is registers. For small C*T.
//   argmax_row_per_group  - one workgroup per row. The row streams through a
//                           workgroup-memory tile of TILE logits (one coalesced
//                           read); thread j scans tau j / S over the tile's
//                           columns j % S, j % S + S, ... (S = 64 / T_pad
//                           slices per tau); the S partial maxima per tau then
//                           meet in a workgroup-memory tree.
//   corrected             - grid-stride over elements, one tau.
//   topk_row_per_group    - one workgroup per row, one tau: each thread keeps
//                           a sorted top-K of its strided columns in registers,
//                           then thread 0 merges the 64 lists from workgroup
//                           memory. Ties order by the smaller index first.
// Barriers (row_per_group): after the tile is loaded (all threads read it),
// after the scan (before the next load overwrites it), and one per merge
// level. Every loop has a workgroup-uniform trip count, and each trip covers
// 4 columns: llvmpipe/lavapipe end an invocation after about 65,535 trips.

struct Params {
    rows: u32,        // rows in this chunk
    classes: u32,     // C
    taus: u32,        // T (1..=64)
    slices: u32,      // S = 64 / T_pad for argmax_row_per_group
    tau_index: u32,   // the adjustment row used by `corrected` and `topk`
    k: u32,           // K for `topk_row_per_group` (1..=MAX_K)
    window_start: u32, // cpu_posthoc.wgsl only (the host fills one Params for both files)
    window_len: u32,
    opaque_zero: u32,
    tau16: array<vec4<f32>, 4>,
}

const WG: u32 = 64u;
const TILE: u32 = 1024u;
const MAX_TAUS: u32 = 64u;
const MAX_K: u32 = 8u;

@group(0) @binding(0) var<uniform> params: Params;
// >>> logits: f32 (for f16 and bf16 the loader swaps in a block of
// blocks/posthoc_formats.wgsl: halves widened to f32 on load, exactly)
@group(0) @binding(1) var<storage, read_write> logits: array<f32>;

// Element e of the logits.
fn logit(e: u32) -> f32 {
    return logits[e];
}
// <<< logits
// a_tc at [t * C + c]
@group(0) @binding(2) var<storage, read> adjust: array<f32>;
// pred[row * T + t]
@group(0) @binding(3) var<storage, read_write> pred: array<u32>;
@group(0) @binding(4) var<storage, read_write> corrected_out: array<f32>;

var<workgroup> tile: array<f32, TILE>;
var<workgroup> red_key: array<u32, WG>;
var<workgroup> red_idx: array<u32, WG>;
var<workgroup> cand_key: array<u32, 512>;   // WG * MAX_K
var<workgroup> cand_idx: array<u32, 512>;

fn is_inf(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7fffffffu) == 0x7f800000u;
}

// f - a, with infinities passed through untouched.
fn adjusted(f: f32, a: f32) -> f32 {
    return select(f - a, f, is_inf(f));
}

// Order-preserving key: larger float, larger key (-inf lowest, +inf highest).
// -0 maps to +0's key, so the two tie as IEEE compares (and numpy) say.
fn key(x: f32) -> u32 {
    let raw = bitcast<u32>(x);
    let b = select(raw, 0u, raw == 0x80000000u);
    return select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u);
}

@compute @workgroup_size(WG)
fn argmax_row_per_thread(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row = gid.x;
    if (row >= params.rows) {
        return;
    }
    let c_len = params.classes;
    // T is a pipeline constant (POST_T), so the loops over the taus unroll
    // and both arrays stay in registers.
    let t_len = POST_T;
    var best_key: array<u32, MAX_TAUS>;
    var best_idx: array<u32, MAX_TAUS>;
    // Column 0 seeds every tau, so a row of -inf still predicts 0.
    let f0 = logit(row * c_len);
    for (var t = 0u; t < t_len; t++) {
        best_key[t] = key(adjusted(f0, adjust[t * c_len]));
        best_idx[t] = 0u;
    }
    for (var c = 1u; c < c_len; c++) {
        let f = logit(row * c_len + c);
        for (var t = 0u; t < t_len; t++) {
            let k = key(adjusted(f, adjust[t * c_len + c]));
            // Strict: an equal later column keeps the earlier index.
            if (k > best_key[t]) {
                best_key[t] = k;
                best_idx[t] = c;
            }
        }
    }
    for (var t = 0u; t < t_len; t++) {
        pred[row * t_len + t] = best_idx[t];
    }
}

fn load_tile(local: u32, tile_base: u32, row_base: u32) {
    let c = tile_base + local;
    if (local < TILE && c < params.classes) {
        tile[local] = logit(row_base + c);
    }
}

// Fold column c into (best_k, best_i) for tau row `t_base`.
fn consider(c: u32, t_base: u32, tile_base: u32, best_k: ptr<function, u32>, best_i: ptr<function, u32>) {
    if (c < params.classes && c - tile_base < TILE) {
        let k = key(adjusted(tile[c - tile_base], adjust[t_base + c]));
        if (k > *best_k) {
            *best_k = k;
            *best_i = c;
        }
    }
}

@compute @workgroup_size(WG)
fn argmax_row_per_group(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) j: u32,
) {
    let row = wid.x;   // the host dispatches exactly `rows` workgroups
    let c_len = params.classes;
    let s_len = params.slices;
    let t = j / s_len;
    let s = j % s_len;
    let on_duty = t < params.taus;
    let t_base = select(0u, t, on_duty) * c_len;
    let row_base = row * c_len;
    // Seed with column 0 so ties and all -inf rows resolve to index 0.
    var best_k = key(adjusted(logit(row_base), adjust[t_base]));
    var best_i = 0u;

    let tiles = (c_len + TILE - 1u) / TILE;
    for (var k = 0u; k < tiles; k++) {
        let tile_base = k * TILE;
        // Trip counts follow the columns present (uniform), so a small C
        // does not pay for a whole tile.
        let cols = min(TILE, c_len - tile_base);
        // Cooperative load: 4 logits per thread per trip.
        let load_trips = (cols + 4u * WG - 1u) / (4u * WG);
        for (var q = 0u; q < load_trips; q++) {
            let l = (q * 4u) * WG + j;
            load_tile(l, tile_base, row_base);
            load_tile(l + WG, tile_base, row_base);
            load_tile(l + 2u * WG, tile_base, row_base);
            load_tile(l + 3u * WG, tile_base, row_base);
        }
        // Barrier: the whole tile is in workgroup memory before any scan.
        workgroupBarrier();
        if (on_duty) {
            let scan_trips = (cols + 4u * s_len - 1u) / (4u * s_len);
            for (var q = 0u; q < scan_trips; q++) {
                let c = tile_base + s + (q * 4u) * s_len;
                consider(c, t_base, tile_base, &best_k, &best_i);
                consider(c + s_len, t_base, tile_base, &best_k, &best_i);
                consider(c + 2u * s_len, t_base, tile_base, &best_k, &best_i);
                consider(c + 3u * s_len, t_base, tile_base, &best_k, &best_i);
            }
        }
        // Barrier: every scan is done before the next tile overwrites it.
        workgroupBarrier();
    }

    red_key[j] = best_k;
    red_idx[j] = best_i;
    // Barrier: all partials stored before the merge reads neighbours.
    workgroupBarrier();
    for (var stride = s_len / 2u; stride > 0u; stride >>= 1u) {
        if (s < stride) {
            let k_o = red_key[j + stride];
            let i_o = red_idx[j + stride];
            let k_s = red_key[j];
            if (k_o > k_s || (k_o == k_s && i_o < red_idx[j])) {
                red_key[j] = k_o;
                red_idx[j] = i_o;
            }
        }
        // Barrier: one merge level complete before the next reads it.
        workgroupBarrier();
    }
    if (on_duty && s == 0u) {
        pred[row * params.taus + t] = red_idx[j];
    }
}

@compute @workgroup_size(WG)
fn corrected(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let total = params.rows * params.classes;
    let stride = groups.x * WG;
    let trips = (total + stride - 1u) / stride;
    let a_base = params.tau_index * params.classes;
    for (var k = 0u; k < trips; k++) {
        let i = k * stride + gid.x;
        if (i < total) {
            corrected_out[i] = adjusted(logit(i), adjust[a_base + i % params.classes]);
        }
    }
}

// (k_a, i_a) ranks before (k_b, i_b): larger value, then smaller index.
fn ranks_before(k_a: u32, i_a: u32, k_b: u32, i_b: u32) -> bool {
    return k_a > k_b || (k_a == k_b && i_a < i_b);
}

// Insert (key, idx) into a sorted list of length `len` (<= K), keeping K.
fn insert(list_k: ptr<function, array<u32, MAX_K>>, list_i: ptr<function, array<u32, MAX_K>>,
          len: ptr<function, u32>, kk: u32, key_new: u32, idx_new: u32) {
    var pos = *len;
    // Find the slot: walk from the end while the new one ranks before.
    for (var q = 0u; q < kk; q++) {
        if (pos > 0u && ranks_before(key_new, idx_new, (*list_k)[pos - 1u], (*list_i)[pos - 1u])) {
            if (pos < kk) {
                (*list_k)[pos] = (*list_k)[pos - 1u];
                (*list_i)[pos] = (*list_i)[pos - 1u];
            }
            pos -= 1u;
        }
    }
    if (pos < kk) {
        (*list_k)[pos] = key_new;
        (*list_i)[pos] = idx_new;
        *len = min(*len + 1u, kk);
    }
}

@compute @workgroup_size(WG)
fn topk_row_per_group(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) j: u32,
) {
    let row = wid.x;
    let c_len = params.classes;
    let kk = params.k;
    let a_base = params.tau_index * c_len;
    var list_k: array<u32, MAX_K>;
    var list_i: array<u32, MAX_K>;
    var len = 0u;
    let trips = (c_len + WG - 1u) / WG;
    for (var q = 0u; q < trips; q++) {
        let c = q * WG + j;
        if (c < c_len) {
            let key_c = key(adjusted(logit(row * c_len + c), adjust[a_base + c]));
            insert(&list_k, &list_i, &len, kk, key_c, c);
        }
    }
    for (var q = 0u; q < kk; q++) {
        // Empty slots rank last: key 0 is below -inf's key, index past C.
        cand_key[j * MAX_K + q] = select(0u, list_k[q], q < len);
        cand_idx[j * MAX_K + q] = select(0xffffffffu, list_i[q], q < len);
    }
    // Barrier: every thread's list is in workgroup memory before the merge.
    workgroupBarrier();
    if (j == 0u) {
        var best_k: array<u32, MAX_K>;
        var best_i: array<u32, MAX_K>;
        var best_len = 0u;
        for (var q = 0u; q < WG * kk; q++) {
            let t = q / kk;
            let slot = q % kk;
            let idx = cand_idx[t * MAX_K + slot];
            if (idx < c_len) {
                insert(&best_k, &best_i, &best_len, kk, cand_key[t * MAX_K + slot], idx);
            }
        }
        for (var q = 0u; q < kk; q++) {
            pred[row * kk + q] = best_i[q];
        }
    }
}

// argmax_row_per_thread: T, the number of taus.
override POST_T: u32 = 1u;
