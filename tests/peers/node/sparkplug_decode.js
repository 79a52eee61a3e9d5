// Decode Sparkplug B payload files with Eclipse Tahu's JavaScript library (npm sparkplug-payload)
// and print one JSON object per file, one per line. Longs are printed as decimal strings.
//
//   node sparkplug_decode.js FILE...
'use strict';
const fs = require('fs');
const sparkplug = require('sparkplug-payload').get('spBv1.0');

function plain(v) {
  if (v === null || v === undefined) return v;
  if (typeof v === 'object' && typeof v.toNumber === 'function' && 'low' in v && 'high' in v) {
    return v.toString();
  }
  if (Buffer.isBuffer(v)) return v.toString('hex');
  if (Array.isArray(v)) return v.map(plain);
  if (typeof v === 'object') {
    const out = {};
    for (const k of Object.keys(v)) out[k] = plain(v[k]);
    return out;
  }
  if (typeof v === 'number' && !Number.isFinite(v)) return String(v);
  return v;
}

for (const file of process.argv.slice(2)) {
  const decoded = sparkplug.decodePayload(fs.readFileSync(file));
  process.stdout.write(JSON.stringify(plain(decoded)) + '\n');
}
