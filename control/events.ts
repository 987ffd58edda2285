/**
 * Timed control events for a replay (`fpo replay --events FILE`): a VM that
 * moves mid-stream, a mapping changed, a flow added or removed — applied
 * between two packets at the given point of the capture, so a captured run
 * shows what a migration does to the traffic.
 *
 *   [ { "atPacket": 300, "do": "migrate", "interface": "vm1-eth0", "to": "vf5" },
 *     { "atTime": 1700000000.25, "do": "add-flow", "flow": "priority=200,udp,actions=drop" },
 *     { "atPacket": 500, "do": "set-mapping", "vpid": 1, "ppid": 11 },
 *     { "atPacket": 600, "do": "migrate", "interface": "vm2-eth0", "away": true },
 *     { "atPacket": 700, "do": "firewall-upgrade", "to": "v2", "ports": ["vm1-eth0"] } ]
 *
 * `atPacket` N: before the (N+1)-th packet of the capture; `atTime` T (epoch
 * seconds, capture time): before the first packet at or after T.
 */
import { readFileSync } from 'node:fs';
import { MAX_PPID } from '../datapath/datapath.js';
import { FpoError } from '../datapath/errors.js';
import { CheckError, array, boolean, formatPath, int, number, object, oneOf, optional, string, type Check, type Out } from './check.js';
import type { Fpag } from './fpag.js';
import { parseFlowSpec, rulesWithout } from './flow-syntax.js';
import { FIREWALL_VERSIONS } from '../datapath/services/firewall/module.js';

// Checked with check.ts, not zod: a replay loads this module, and zod's load was ~60-90 ms of start-up.
const When = { atPacket: optional(number({ int: true, min: 0 })), atTime: optional(number({ min: 0 })) };
const EVENTS = {
  migrate: object({ ...When, do: oneOf(['migrate'] as const), interface: string({ min: 1 }), to: optional(string({ min: 1 })), away: optional(boolean()), newVpid: optional(number({ int: true, min: 1 })) }),
  'set-mapping': object({ ...When, do: oneOf(['set-mapping'] as const), vpid: number({ int: true, min: 0 }), ppid: int(0, MAX_PPID) }),
  'add-flow': object({ ...When, do: oneOf(['add-flow'] as const), flow: string({ min: 1 }) }),
  'del-flow': object({ ...When, do: oneOf(['del-flow'] as const), flow: string({ min: 1 }) }),
  'firewall-upgrade': object({ ...When, do: oneOf(['firewall-upgrade'] as const), to: optional(string({ min: 1 })), ports: optional(array(string({ min: 1 }))), resume: optional(boolean()), restart: optional(boolean()), maxPauseMs: optional(number({ min: 0 })) }),
};
export type ControlEvent = { [K in keyof typeof EVENTS]: Out<(typeof EVENTS)[K]> }[keyof typeof EVENTS];

/** An event: its `do` picks its shape. */
const EventSchema: Check<ControlEvent> = (v, path) => {
  const what = typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as { do?: unknown }).do : undefined;
  if (typeof what !== 'string' || !Object.hasOwn(EVENTS, what)) {
    if (typeof v !== 'object' || v === null || Array.isArray(v)) return object({})(v, path) as never; // "expected object, received …"
    throw new CheckError([...path, 'do'], `Invalid discriminator value. Expected ${Object.keys(EVENTS).map((k) => `'${k}'`).join(' | ')}`);
  }
  return EVENTS[what as keyof typeof EVENTS](v, path);
};

export interface AppliedEvent {
  event: ControlEvent;
  /** Packets read before it took effect. */
  atPacket: number;
  result: unknown;
}

export function loadEvents(path: string): ControlEvent[] {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new FpoError('FPO_ERR_USAGE', `${path}: cannot read events: ${(e as Error).message}`, { path });
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new FpoError('FPO_ERR_USAGE', `${path}: (file): not JSON: ${(e as Error).message}`, { path });
  }
  let events: ControlEvent[];
  try {
    events = array(EventSchema)(json, []);
  } catch (e) {
    if (!(e instanceof CheckError)) throw e;
    // The top level is `events` (an array): events: …, events[2].vpid: …
    const field = e.path.length === 0 ? '' : formatPath(e.path);
    throw new FpoError('FPO_ERR_USAGE', `${path}: events${field.startsWith('[') || field === '' ? '' : '.'}${field}: ${e.message}`, { path });
  }
  events.forEach((e, i) => {
    if ((e.atPacket === undefined) === (e.atTime === undefined)) throw new FpoError('FPO_ERR_USAGE', `${path}: events[${i}]: give exactly one of atPacket, atTime`, { path });
    if (e.do === 'migrate' && (e.to === undefined) === (e.away !== true)) throw new FpoError('FPO_ERR_USAGE', `${path}: events[${i}]: a migrate needs "to": PORT or "away": true`, { path });
    if (e.do === 'firewall-upgrade' && e.resume !== true && e.to === undefined) throw new FpoError('FPO_ERR_USAGE', `${path}: events[${i}].to: a firewall-upgrade needs "to" (a version), unless it is "resume": true`, { path });
    if (e.do === 'firewall-upgrade' && e.maxPauseMs !== undefined && !(e.maxPauseMs > 0 && e.maxPauseMs <= 60_000)) throw new FpoError('FPO_ERR_USAGE', `${path}: events[${i}].maxPauseMs: ${e.maxPauseMs}: expected ms in (0, 60000]`, { path });
    if (e.do === 'firewall-upgrade' && e.to !== undefined && !(FIREWALL_VERSIONS as readonly string[]).includes(e.to)) throw new FpoError('FPO_ERR_USAGE', `${path}: events[${i}].to: ${JSON.stringify(e.to).slice(0, 40)}: this build's firewall versions are ${FIREWALL_VERSIONS.join(', ')}`, { path });
    if (e.do === 'add-flow' || e.do === 'del-flow') {
      try { parseFlowSpec(e.flow, e.do === 'add-flow'); } catch (x) { throw new FpoError('FPO_ERR_USAGE', `${path}: events[${i}].flow: ${(x as Error).message}`, { path }); }
    }
  });
  return events;
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
      // As fpo ctl del-flow: the rules with this match, and this priority and table when given.
      const { keep, removed } = rulesWithout(fpag.ruleSpecs, e.flow);
      return { removed, revalidated: fpag.setRules(keep) };
    }
    case 'firewall-upgrade': {
      // As fpo ctl firewall upgrade, all at once between two packets (a replay: none arrives meanwhile).
      const up = fpag.firewallUpgrade;
      if (e.resume === true) up.resume(e.maxPauseMs);
      else up.plan(e.to!, e.ports, e.maxPauseMs, e.restart === true);
      return up.runSync();
    }
  }
}
