// The browser side of the WebGPU harness: replays the conformance cells that
// `logit-adjust check --export-webgpu` wrote (buffers, steps, reference
// outputs) through the page's WebGPU, with the shader files from shaders/
// as they are, and judges every output as `check` does. run.js serves the
// files and reads window.HARNESS when document.title becomes DONE.

// Per-target WGSL changes, applied by the loader before Tint sees a file:
// file name -> [[text, replacement], ...]. None is needed today: the files
// are written in the WGSL both naga and Tint accept (docs/PORTABILITY.md).
const TINT_PATCHES = {};

// The harness's own check (run.js --fault): the same wrong kernel as the
// Rust side's LOGIT_ADJUST_FAULT=grad-ulp, the first gradient element one
// ulp off, which the ignored-labels cells must catch.
const FAULTS = {
  'softmax_xent.wgsl': [[
    'fn stored(e: u32, g: f32) -> f32 {\n    return g;',
    'fn stored(e: u32, g_true: f32) -> f32 {\n    let g = bitcast<f32>(bitcast<u32>(g_true) + select(0u, 1u, e == 0u));\n    return g;',
  ]],
};
const FAULT = new URLSearchParams(location.search).get('fault') === 'grad-ulp';

const U = GPUBufferUsage;

async function fetchText(path) {
  const r = await fetch(path);
  if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
  return r.text();
}

async function loadShader(name) {
  let text = await fetchText('/shaders/' + name);
  const patches = (TINT_PATCHES[name] || []).concat(FAULT ? FAULTS[name] || [] : []);
  for (const [from, to] of patches) {
    if (!text.includes(from)) throw new Error(`${name}: patch target not found: ${from}`);
    text = text.split(from).join(to);
  }
  return text;
}

async function compile(device, name) {
  device.pushErrorScope('validation');
  const module = device.createShaderModule({ code: await loadShader(name), label: name });
  const info = await module.getCompilationInfo();
  const scope = await device.popErrorScope();
  const errors = info.messages
    .filter((m) => m.type === 'error')
    .map((m) => `${name}:${m.lineNum}:${m.linePos} ${m.message}`);
  if (scope) errors.push(`${name}: ${scope.message}`);
  return { module, error: errors.length ? errors.join('; ') : null };
}

function judge(expect, bytes, blob) {
  const n = expect.count;
  const got = expect.kind === 'f32' ? new Float32Array(bytes, 0, n) : new Uint32Array(bytes, 0, n);
  const [at] = expect.values;
  const want = expect.kind === 'f32' ? new Float64Array(blob, at, n) : new Uint32Array(blob, at, n);
  const exact = new Set(expect.exact_rows);
  let maxAbs = 0;
  let maxRel = 0;
  let first = null;
  for (let i = 0; i < n; i++) {
    const g = got[i];
    const w = want[i];
    const err = Math.abs(g - w);
    if (Number.isFinite(g)) {
      maxAbs = Math.max(maxAbs, err);
      if (w !== 0) maxRel = Math.max(maxRel, err / Math.abs(w));
    }
    let ok;
    if (expect.kind === 'u32') ok = g === w;
    else if (exact.has(Math.floor(i / Math.max(1, expect.row_len)))) ok = g === 0;
    else ok = Number.isFinite(g) && err <= expect.abs + expect.rel * Math.abs(w);
    if (!ok && first === null) first = `${expect.output}[${i}]: ${g}, reference ${w}`;
  }
  return { ok: first === null, maxAbs, maxRel, first };
}

async function runCell(device, modules, cell) {
  const started = performance.now();
  const blob = await (await fetch('/export/' + cell.blob)).arrayBuffer();
  const buffers = cell.buffers.map((b) => {
    const buffer = device.createBuffer({
      size: b.size,
      usage: U.STORAGE | U.UNIFORM | U.COPY_SRC | U.COPY_DST,
      mappedAtCreation: b.init !== null,
      label: b.name,
    });
    if (b.init !== null) {
      new Uint8Array(buffer.getMappedRange()).set(new Uint8Array(blob, b.init[0], b.init[1]));
      buffer.unmap();
    }
    return buffer;
  });
  const layouts = new Map();
  const pipelines = new Map();
  try {
    device.pushErrorScope('validation');
    const encoder = device.createCommandEncoder();
    for (const step of cell.steps) {
      if (step.clear) {
        encoder.clearBuffer(buffers[step.clear.buffer], step.clear.offset, step.clear.size);
        continue;
      }
      const shader = modules[step.shader];
      if (shader.error) throw new Error(`Tint rejects ${step.shader}: ${shader.error}`);
      const kinds = step.bindings.map((b) => b.kind).join(',');
      if (!layouts.has(kinds)) {
        layouts.set(kinds, device.createBindGroupLayout({
          entries: step.bindings.map((b) => ({
            binding: b.binding,
            visibility: GPUShaderStage.COMPUTE,
            buffer: { type: b.kind },
          })),
        }));
      }
      const layout = layouts.get(kinds);
      const key = `${step.shader}|${step.entry}|${JSON.stringify(step.constants)}|${kinds}`;
      if (!pipelines.has(key)) {
        try {
          pipelines.set(key, await device.createComputePipelineAsync({
            layout: device.createPipelineLayout({ bindGroupLayouts: [layout] }),
            compute: { module: shader.module, entryPoint: step.entry, constants: step.constants },
          }));
        } catch (e) {
          throw new Error(`pipeline ${step.shader}:${step.entry} ${JSON.stringify(step.constants)}: ${e.message}`);
        }
      }
      const group = device.createBindGroup({
        layout,
        entries: step.bindings.map((b) => ({
          binding: b.binding,
          resource: { buffer: buffers[b.buffer], offset: b.offset, size: b.size },
        })),
      });
      const pass = encoder.beginComputePass();
      pass.setPipeline(pipelines.get(key));
      pass.setBindGroup(0, group);
      pass.dispatchWorkgroups(...step.grid);
      pass.end();
    }
    const staging = cell.expects.map((e) => {
      const bytes = 4 * e.count;
      const s = device.createBuffer({ size: Math.max(4, bytes), usage: U.MAP_READ | U.COPY_DST });
      encoder.copyBufferToBuffer(buffers[e.buffer], 0, s, 0, bytes);
      return s;
    });
    device.queue.submit([encoder.finish()]);
    const scope = await device.popErrorScope();
    if (scope) throw new Error(`WebGPU validation: ${scope.message}`);
    let result = { label: cell.label, passed: true, message: '', max_abs: 0, max_rel: 0 };
    for (let k = 0; k < staging.length; k++) {
      await staging[k].mapAsync(GPUMapMode.READ);
      const j = judge(cell.expects[k], staging[k].getMappedRange().slice(0), blob);
      staging[k].unmap();
      staging[k].destroy();
      result.max_abs = Math.max(result.max_abs, j.maxAbs);
      result.max_rel = Math.max(result.max_rel, j.maxRel);
      if (!j.ok && result.passed) {
        result.passed = false;
        result.message = j.first;
      }
    }
    result.ms = performance.now() - started;
    return result;
  } catch (e) {
    return { label: cell.label, passed: false, message: String(e.message || e), ms: performance.now() - started };
  } finally {
    for (const b of buffers) b.destroy();
  }
}

(async () => {
  const out = { adapter: null, shaders: {}, cells: [], error: null };
  try {
    const adapter = await navigator.gpu?.requestAdapter();
    if (!adapter) throw new Error('no WebGPU adapter (navigator.gpu.requestAdapter gave none)');
    const info = adapter.info || {};
    out.adapter = `${info.vendor} ${info.architecture} ${info.device} ${info.description}`.trim();
    out.features = [...adapter.features].sort();
    // WebGPU's default limits: what the exported plans were made for.
    const device = await adapter.requestDevice();
    device.lost.then((l) => { out.error = `device lost: ${l.message}`; });
    const manifest = JSON.parse(await fetchText('/export/manifest.json'));
    // Every file under shaders/ goes through Tint, not only the cells' own.
    const names = JSON.parse(await fetchText('/shader-list'));
    for (const name of manifest.shaders) {
      if (!names.includes(name)) throw new Error(`the export uses ${name}, which shaders/ lacks`);
    }
    const modules = {};
    for (const name of names) {
      modules[name] = await compile(device, name);
      out.shaders[name] = modules[name].error || 'ok';
    }
    for (const cell of manifest.cells) {
      console.log(`start ${cell.label}`);
      out.cells.push(await runCell(device, modules, cell));
      document.title = `RUNNING ${out.cells.length}/${manifest.cells.length}`;
    }
  } catch (e) {
    out.error = String(e.stack || e);
  }
  window.HARNESS = out;
  document.title = 'DONE';
})();
