// Builds engine.wasm and engine-fma.wasm from engine.wat with wabt (npm install wabt):
//   node charrnn/static/webpage/build.mjs
// The fused variant replaces each `(f32x4.add (local.get $acc) (f32x4.mul LOAD X))` of
// the product by `(f32x4.relaxed_madd LOAD X (local.get $acc))`.
import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";

const here = path.dirname(new URL(import.meta.url).pathname);
const wabt = await createRequire(path.join(process.cwd(), "x.js"))("wabt")();
const source = fs.readFileSync(path.join(here, "engine.wat"), "utf8");
const fused = source.replace(
  /\(f32x4\.add \(local\.get (\$a\d_\d)\) \(f32x4\.mul (\(v128\.load [^()]*\(i32\.add \(local\.get \$w\d\) \(local\.get \$k\)\)\)) \(local\.get \$xv\)\)\)/g,
  "(f32x4.relaxed_madd $2 (local.get $xv) (local.get $1))");
if (fused === source) throw new Error("no multiply-add found to fuse");
for (const [name, text] of [["engine.wasm", source], ["engine-fma.wasm", fused]]) {
  const module = wabt.parseWat(name, text, { simd: true, relaxed_simd: true });
  module.validate();
  const { buffer } = module.toBinary({});
  fs.writeFileSync(path.join(here, name), Buffer.from(buffer));
  console.log(`wrote ${name}: ${buffer.length} bytes`);
}
