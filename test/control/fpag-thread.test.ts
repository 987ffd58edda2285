import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { Action } from '../../datapath/actions/action-sets.js';
import { KEY_WORDS } from '../../datapath/classifier/flow-key.js';
import type { ControlMessage, FlowInstalls } from '../../datapath/upcall.js';
import { ActionCache, decodeAnswerInto, decodeInstalls, encodeAnswer, encodeInstalls, newAnswer } from '../../control/fpag-thread.js';

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
  it('a FlowInstalls (and single installs) in keyed words come back as installed: keys masked, each flow\'s mask, actions', () => {
    fc.assert(fc.property(flows, ([lists, f]) => {
      const out = new Uint32Array(1 << 16);
      // Masks by place (maskAt, in reverse) and keys by place (keyAt): what each flow names is what goes.
      const n = f.length;
      const msg: FlowInstalls = { type: 'flow-installs', count: n, keys: new Uint32Array(n * KEY_WORDS), masks: new Uint32Array(n * KEY_WORDS), actions: [], keyAt: Int32Array.from(f, (_, j) => n - 1 - j), maskAt: Int32Array.from(f, (_, j) => n - 1 - j) };
      f.forEach(([k, m, a], j) => { msg.keys.set(k, (n - 1 - j) * KEY_WORDS); msg.masks.set(m, (n - 1 - j) * KEY_WORDS); msg.actions.push(lists[a % lists.length]); });
      const single: ControlMessage = { type: 'flow-install', key: f[0][0], mask: f[0][1], actions: lists[0] };
      expect(encodeInstalls([msg, single], out)).toBeGreaterThan(0);
      const got = decodeInstalls(out);
      expect(got.length).toBe(n + 1);
      f.forEach(([k, m, a], j) => {
        const g = got[j] as { key: Uint32Array; mask: Uint32Array; actions: Action[] };
        expect([...g.key]).toEqual([...k].map((w, x) => (w & m[x]) >>> 0));
        expect([...g.mask]).toEqual([...m]);
        expect(g.actions).toEqual(lists[a % lists.length]);
      });
    }), { numRuns: 200 });
  });

  it('an answer naming its keys comes back as it went, appended behind earlier ones: each flow its key\'s place and its mask, each distinct action list one array across answers', () => {
    const keyed = fc.tuple(fc.array(fc.array(action, { maxLength: 5 }), { minLength: 1, maxLength: 4 }), fc.array(words, { minLength: 1, maxLength: 4 }), fc.array(fc.tuple(fc.nat(1023), fc.nat(3), fc.nat(3)), { maxLength: 40 }), fc.nat(500));
    fc.assert(fc.property(keyed, keyed, fc.boolean(), (a1, a2, append) => {
      const cache = new ActionCache();
      const out = new Uint32Array(1 << 16);
      const into = newAnswer();
      const seen = new Map<string, Action[]>();
      const want: { key: number; mask: Uint32Array; actions: Action[] }[] = [];
      let first = true;
      for (const [lists, maskList, fl, base] of [a1, a2]) {
        // A BatchFlows-like message: masks by place (a few, some flows sharing one), keys by their request index.
        const n = fl.length;
        const masks = new Uint32Array(maskList.length * KEY_WORDS);
        maskList.forEach((m, x) => masks.set(m, x * KEY_WORDS));
        const msg: FlowInstalls = { type: 'flow-installs', count: n, keys: new Uint32Array(n * KEY_WORDS), masks, actions: fl.map(([, , a]) => lists[a % lists.length]), keyOf: Int32Array.from(fl, ([k]) => k), maskAt: Int32Array.from(fl, ([, m]) => m % maskList.length) };
        const entry = Int32Array.from({ length: 7 }, (_, j) => j - 1);
        const words = encodeAnswer(n === 0 ? null : msg, out, entry, 7);
        expect(words).toBeGreaterThan(0);
        const app = append && !first;
        if (!app) want.length = 0;
        const o = decodeAnswerInto(out, into, cache, app, base);
        expect([...out.subarray(o + 1, o + 8)].map((x) => x | 0)).toEqual([...entry]); // the entries follow
        fl.forEach(([k, m, a]) => want.push({ key: base + k, mask: maskList[m % maskList.length], actions: lists[a % lists.length] }));
        expect(into.count).toBe(want.length);
        want.forEach((w, j) => {
          expect(into.keyAt[j]).toBe(w.key);
          expect([...into.masks.subarray(into.maskAt[j] * KEY_WORDS, (into.maskAt[j] + 1) * KEY_WORDS)]).toEqual([...w.mask]);
          expect(into.actions[j]).toEqual(w.actions);
        });
        // One array per distinct list, in this answer and the next.
        for (const a of into.actions) {
          const t = JSON.stringify(a);
          if (!seen.has(t)) seen.set(t, a);
          expect(a).toBe(seen.get(t));
        }
        first = false;
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
