// The WebGPU harness's driver: starts Debian's Chromium headless with WebGPU
// on SwiftShader (Dawn compiles the WGSL with Tint), serves the page, the
// shader files from shaders/ and the export of `logit-adjust check
// --export-webgpu DIR` from memory-less routes (nothing listens on a port),
// prints one line per cell and exits 1 when a cell fails or Tint rejects a
// file.
//
//   node tests/webgpu/run.js DIR          every cell must pass (exit 0), else 1
//   node tests/webgpu/run.js DIR --fault  the harness's own check: with the
//       first gradient element one ulp off, exactly the ignored-label
//       gradient cells must fail (exit 0 when they do, else 1)
// Exit 2: the harness itself could not run (no adapter, a timeout).
const fs = require('fs');
const path = require('path');
const { chromium } = require('playwright-core');

const exportDir = process.argv[2];
if (!exportDir) {
  console.error('usage: node run.js EXPORT_DIR (from logit-adjust check --export-webgpu EXPORT_DIR)');
  process.exit(2);
}
const shadersDir = path.join(__dirname, '..', '..', 'shaders');
const here = __dirname;
const timeoutMs = Number(process.env.HARNESS_TIMEOUT_MS || 270000);
const fault = process.argv.includes('--fault');

function file(root, rel) {
  const p = path.resolve(root, rel);
  if (!p.startsWith(path.resolve(root) + path.sep)) throw new Error(`outside ${root}: ${rel}`);
  return fs.readFileSync(p);
}

(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: [
      '--enable-unsafe-webgpu', '--enable-features=Vulkan', '--use-vulkan=swiftshader',
      '--use-webgpu-adapter=swiftshader', '--use-angle=swiftshader', '--no-sandbox',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--no-first-run', '--disable-quic',
    ],
  });
  try {
    const page = await browser.newPage();
    page.on('console', (m) => {
      if (m.type() === 'error' || process.env.HARNESS_VERBOSE) console.error('page:', m.text());
    });
    await page.route('http://localhost/**', (route) => {
      const url = new URL(route.request().url());
      const p = decodeURIComponent(url.pathname);
      try {
        if (p === '/') {
          return route.fulfill({ contentType: 'text/html', body: '<!doctype html><title>START</title><script src="/harness.js"></script>' });
        }
        if (p === '/shader-list') {
          const names = fs.readdirSync(shadersDir).filter((f) => f.endsWith('.wgsl')).sort();
          return route.fulfill({ contentType: 'application/json', body: JSON.stringify(names) });
        }
        if (p === '/harness.js') return route.fulfill({ contentType: 'text/javascript', body: file(here, 'harness.js') });
        if (p.startsWith('/shaders/')) return route.fulfill({ contentType: 'text/plain', body: file(shadersDir, p.slice(9)) });
        if (p.startsWith('/export/')) return route.fulfill({ contentType: 'application/octet-stream', body: file(exportDir, p.slice(8)) });
        return route.fulfill({ status: 404, body: 'not found' });
      } catch (e) {
        return route.fulfill({ status: 404, body: String(e) });
      }
    });
    const started = Date.now();
    await page.goto(fault ? 'http://localhost/?fault=grad-ulp' : 'http://localhost/');
    await page.waitForFunction(() => document.title === 'DONE', null, { timeout: timeoutMs, polling: 500 });
    const out = await page.evaluate(() => window.HARNESS);
    console.log(`Chromium ${browser.version()}, WebGPU adapter: ${out.adapter} (features: ${(out.features || []).join(', ')})`);
    let failed = 0;
    for (const [name, status] of Object.entries(out.shaders)) {
      console.log(`  Tint ${name}: ${status}`);
      if (status !== 'ok') failed++;
    }
    // Under --fault, these cells must fail and every other must pass.
    const mustFail = (label) => fault && /^xent_(fused|backward)\(.*shape=ignored_labels\)$/.test(label);
    let unexpected = 0;
    for (const c of out.cells) {
      const errs = c.max_abs === undefined ? '' : ` max_abs=${c.max_abs.toExponential(2)} max_rel=${c.max_rel.toExponential(2)}`;
      const expected = mustFail(c.label) ? ' (expected under --fault)' : '';
      console.log(`  ${c.label}: ${c.passed ? 'OK' : 'FAIL ' + c.message}${errs} (${Math.round(c.ms)} ms)${c.passed ? '' : expected}`);
      if (!c.passed) failed++;
      if (c.passed === mustFail(c.label)) unexpected++;
    }
    const secs = ((Date.now() - started) / 1000).toFixed(1);
    const passed = out.cells.filter((c) => c.passed).length;
    console.log(`${passed}/${out.cells.length} cells passed in the browser, ${failed} failures, ${secs} s`);
    if (out.error || out.cells.length === 0) {
      console.log(`harness error: ${out.error || 'no cells'}`);
      process.exitCode = 2;
    } else if (fault) {
      const caught = unexpected === 0 && failed > 0;
      console.log(caught ? 'the wrong kernel was caught, and only in its cells' : `--fault: ${unexpected} cells did not go as expected`);
      process.exitCode = caught ? 0 : 1;
    } else {
      process.exitCode = failed === 0 ? 0 : 1;
    }
  } finally {
    await browser.close();
  }
})().catch((e) => {
  console.error(e);
  process.exit(2);
});
