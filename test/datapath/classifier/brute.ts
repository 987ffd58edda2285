import { KEY_WORDS } from '../../../datapath/classifier/flow-key.js';
import type { FlowTable } from '../../../datapath/classifier/flow-table.js';

/** The live flows whose key under their subtable's mask key k matches: a brute-force search over every index (a quarantine's spare indices past the capacity too). */
export function bruteFlows(t: FlowTable, k: Uint32Array): number[] {
  const out: number[] = [];
  for (let f = 0; f < t.indices; f++) {
    if (!t.live[f]) continue;
    const s = t.sub[f];
    let ok = true;
    for (let w = 0; w < KEY_WORDS; w++) if (((k[w] ^ t.key[f * KEY_WORDS + w]) & t.mask[s * KEY_WORDS + w]) !== 0) ok = false;
    if (ok) out.push(f);
  }
  return out;
}
