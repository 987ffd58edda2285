/**
 * Timed control events for a replay (`fpo replay --events FILE`): a VM that
 * moves mid-stream, a mapping changed, a flow added or removed — applied
 * between two packets at the given point of the capture, so a captured run
 * shows what a migration does to the traffic.
 *
 *   [ { "atPacket": 300, "do": "migrate", "interface": "vm1-eth0", "to": "vf5" },
 *     { "atTime": 1700000000.25, "do": "add-flow", "flow": "priority=200,udp,actions=drop" },
 *     { "atPacket": 500, "do": "set-mapping", "vpid": 1, "ppid": 11 },
 *     { "atPacket": 600, "do": "migrate", "interface": "vm2-eth0", "away": true } ]
 *
 * `atPacket` N: before the (N+1)-th packet of the capture; `atTime` T (epoch
 * seconds, capture time): before the first packet at or after T.
 */
import { readFileSync } from 'node:fs';
import { z } from 'zod';
import { FpoError } from '../datapath/errors.js';
import type { Fpag } from './fpag.js';
import { parseFlowSpec } from './flow-syntax.js';

const When = { atPacket: z.number().int().min(0).optional(), atTime: z.number().min(0).optional() };
const EventSchema = z.discriminatedUnion('do', [
  z.strictObject({ ...When, do: z.literal('migrate'), interface: z.string().min(1), to: z.string().min(1).optional(), away: z.boolean().optional(), newVpid: z.number().int().min(1).optional() }),
  z.strictObject({ ...When, do: z.literal('set-mapping'), vpid: z.number().int().min(0), ppid: z.number().int().min(0) }),
  z.strictObject({ ...When, do: z.literal('add-flow'), flow: z.string().min(1) }),
  z.strictObject({ ...When, do: z.literal('del-flow'), flow: z.string().min(1) }),
]);
export type ControlEvent = z.infer<typeof EventSchema>;

export interface AppliedEvent {
  event: ControlEvent;
  /** Packets read before it took effect. */
  atPacket: number;
  result: unknown;
}

export function loadEvents(path: string): ControlEvent[] {
  let json: unknown;
  try {
    json = JSON.parse(readFileSync(path, 'utf8'));
  } catch (e) {
    throw new FpoError('FPO_ERR_USAGE', `${path}: cannot read events: ${(e as Error).message}`, { path });
  }
  const r = z.array(EventSchema).safeParse(json);
  if (!r.success) {
    const issue = r.error.issues[0];
    const field = issue.path.map((p) => (typeof p === 'number' ? `[${p}]` : `.${String(p)}`)).join('').replace(/^\./, '') || '(top level)';
    throw new FpoError('FPO_ERR_USAGE', `${path}: events${field.startsWith('[') ? '' : '.'}${field}: ${issue.message}`, { path });
  }
  r.data.forEach((e, i) => {
    if ((e.atPacket === undefined) === (e.atTime === undefined)) throw new FpoError('FPO_ERR_USAGE', `${path}: events[${i}]: give exactly one of atPacket, atTime`, { path });
    if (e.do === 'migrate' && (e.to === undefined) === (e.away !== true)) throw new FpoError('FPO_ERR_USAGE', `${path}: events[${i}]: a migrate needs "to": PORT or "away": true`, { path });
    if (e.do === 'add-flow' || e.do === 'del-flow') {
      try { parseFlowSpec(e.flow, e.do === 'add-flow'); } catch (x) { throw new FpoError('FPO_ERR_USAGE', `${path}: events[${i}].flow: ${(x as Error).message}`, { path }); }
    }
  });
  return r.data;
}

/** Applies one event through the FPAG (the same paths as fpo ctl). */
export function applyEvent(fpag: Fpag, e: ControlEvent): unknown {
  switch (e.do) {
    case 'migrate':
      return fpag.migrate(e.interface, e.away ? null : e.to!, e.newVpid);
    case 'set-mapping':
      fpag.setMapping(e.vpid, e.ppid);
      return { vpid: e.vpid, ppid: e.ppid };
    case 'add-flow':
      return fpag.setRules([...fpag.ruleSpecs, parseFlowSpec(e.flow)]);
    case 'del-flow': {
      // As fpo ctl del-flow: the rules with this match, and this priority when one is given.
      const want = parseFlowSpec(e.flow, false);
      const key = (m: object) => JSON.stringify(Object.entries(m).sort());
      const hasPriority = /(^|,)\s*priority=/.test(e.flow);
      const keep = fpag.ruleSpecs.filter((r) => !(key(r.match) === key(want.match) && (!hasPriority || r.priority === want.priority)));
      const removed = fpag.ruleSpecs.length - keep.length;
      return { removed, revalidated: fpag.setRules(keep) };
    }
  }
}
