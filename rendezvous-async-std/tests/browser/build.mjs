// Bundles page.js with esbuild and inlines it into one self-contained dist/page.html,
// which Chromium can open from file:// (external module scripts are blocked there).
import { build } from 'esbuild'
import { mkdirSync, writeFileSync } from 'node:fs'

const out = await build({
  entryPoints: ['page.js'],
  bundle: true,
  format: 'esm',
  platform: 'browser',
  target: 'es2022',
  minify: true,
  legalComments: 'none',
  write: false
})
const js = out.outputFiles[0].text
// esbuild escapes "</script" in its output; make sure, since it would end the inline script.
if (/<\/script/i.test(js)) throw new Error('bundle contains "</script"; cannot inline')

const html = `<!doctype html>
<html><head><meta charset="utf-8"><title>running</title></head>
<body><pre id="result"></pre>
<script type="module">${js}</script>
</body></html>
`
mkdirSync('dist', { recursive: true })
writeFileSync('dist/page.html', html)
console.log(`dist/page.html: ${Buffer.byteLength(html)} bytes`)
