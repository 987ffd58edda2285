import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { Action } from '../../datapath/actions/action-sets.js';
import { KEY_WORDS } from '../../datapath/classifier/flow-key.js';
import type { ControlMessage, FlowInstalls } from '../../datapath/upcall.js';
import { ActionCache, decodeInstalls, decodeInstallsInto, encodeInstalls } from '../../control/fpag-thread.js';

const action: fc.Arbitrary<Action> = fc.oneof(
  fc.nat(65535).map((vpid) => ({ op: 'output', vpid }) as Action),
  fc.nat(40).map((reason) => ({ op: 'drop', reason }) as Action),
  fc.tuple(fc.nat(15), fc.nat(0xffffff)).map(([tunnel, vni]) => ({ op: 'encap', tunnel, vni }) as Action),
  fc.constant({ op: 'flag' } as Action),
  fc.nat(4095).map((vid) => ({ op: 'push_vlan', vid }) as Action),
  fc.constant({ op: 'pop_vlan' } as Action),
  fc.tuple(fc.nat(65535), fc.boolean(), fc.integer({ min: -1, max: 255 }), fc.boolean()).map(([zone, commit, table, fw]) => (fw ? { op: 'ct', zone, commit, table, fw } : { op: 'ct', zone, commit, table }) as Action),
);
const words = fc.array(fc.nat(0xffffffff), { minLength: KEY_WORDS, maxLength: KEY_WORDS }).map((a) => Uint32Array.from(a));
// Few distinct action lists, so that installs share them as a batch's flows do.
const flows = fc.tuple(fc.array(fc.array(action, { maxLength: 5 }), { minLength: 1, maxLength: 4 }), fc.array(fc.tuple(words, words, fc.nat(3)), { minLength: 1, maxLength: 40 }));

describe('the FPAG thread\'s answer in words', () => {
  it('a FlowInstalls (and single installs) come back as they went, each distinct action list as one array across answers', () => {
    fc.assert(fc.property(flows, flows, ([lists, fl], [lists2, fl2]) => {
      const cache = new ActionCache();
      const out = new Uint32Array(1 << 16);
      const seen = new Map<string, Action[]>();
      for (const [ls, f] of [[lists, fl], [lists2, fl2]] as const) {
        const msg: FlowInstalls = { type: 'flow-installs', count: f.length, keys: new Uint32Array(f.length * KEY_WORDS), masks: new Uint32Array(f.length * KEY_WORDS), actions: [] };
        f.forEach(([k, m, a], j) => { msg.keys.set(k, j * KEY_WORDS); msg.masks.set(m, j * KEY_WORDS); msg.actions.push(ls[a % ls.length]); });
        const single: ControlMessage = { type: 'flow-install', key: f[0][0], mask: f[0][1], actions: ls[0] };
        const n = encodeInstalls([msg, single], out);
        expect(n).toBeGreaterThan(0);
        expect(decodeInstalls(out).length).toBe(f.length + 1);
        const got: FlowInstalls = { type: 'flow-installs', count: 0, keys: new Uint32Array(0), masks: new Uint32Array(0), actions: [] };
        decodeInstallsInto(out, got, cache);
        expect(got.count).toBe(f.length + 1);
        f.forEach(([k, m, a], j) => {
          expect([...got.keys.subarray(j * KEY_WORDS, (j + 1) * KEY_WORDS)]).toEqual([...k]);
          expect([...got.masks.subarray(j * KEY_WORDS, (j + 1) * KEY_WORDS)]).toEqual([...m]);
          expect(got.actions[j]).toEqual(ls[a % ls.length]);
        });
        expect(got.actions[f.length]).toEqual(ls[0]);
        // One array per distinct list, in this answer and the next.
        for (const a of got.actions) {
          const t = JSON.stringify(a);
          if (!seen.has(t)) seen.set(t, a);
          expect(a).toBe(seen.get(t));
        }
      }
    }), { numRuns: 200 });
  });

  it('an answer that does not fit its area is refused (-1), not cut', () => {
    const many: Action[] = Array.from({ length: 100 }, (_, v) => ({ op: 'output', vpid: v }));
    const msg: ControlMessage = { type: 'flow-install', key: new Uint32Array(KEY_WORDS), mask: new Uint32Array(KEY_WORDS), actions: many };
    expect(encodeInstalls([msg], new Uint32Array(2 * KEY_WORDS + 2 + 3 * 100))).toBe(2 * KEY_WORDS + 2 + 3 * 100);
    expect(encodeInstalls([msg], new Uint32Array(2 * KEY_WORDS + 1 + 3 * 100))).toBe(-1);
  });
});
