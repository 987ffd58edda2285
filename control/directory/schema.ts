/**
 * The directory's entries in etcd (issue 22): one prefix per deployment,
 * under it a key per host, VM interface and segment, each a JSON value.
 *
 *   /fpo/DEPLOYMENT/hosts/NAME        {"name","vtep","mac","kind"}        under the host's lease
 *   /fpo/DEPLOYMENT/interfaces/NAME   {"name","mac","ips","segment","host","vpid"}
 *   /fpo/DEPLOYMENT/segments/NAME     {"name","vni"}
 *
 * Every entry is checked on read (`parseEntry`): its key's kind and name,
 * its JSON, each field (addresses, MACs, VNI and VPID ranges), the name in
 * the value equal to the key's. A bad entry is refused with what was
 * expected — reported, never applied, never a crash — and the rest are
 * taken as they are.
 */
import { CheckError, array, formatPath, int, object, oneOf, string, withDefault, type Out } from '../check.js';

const name = string({ regex: /^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/, message: 'expected a name of 1 to 63 letters, digits, _ . - (not starting with a symbol)' });
const mac = string({ regex: /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/, message: 'expected a lowercase MAC address like 02:00:00:00:01:01' });
const ipv4 = string({ regex: /^((25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)$/, message: 'expected an IPv4 address like 192.168.0.1' });

export const HostEntry = object({ name, vtep: ipv4, mac, kind: withDefault(oneOf(['vxlan', 'geneve'] as const), () => 'geneve' as const) });
export const InterfaceEntry = object({ name, mac, ips: withDefault(array(ipv4), () => []), segment: name, host: name, vpid: int(1, 65535) });
export const SegmentEntry = object({ name, vni: int(1, 16777215) });

export type Host = Out<typeof HostEntry>;
export type Iface = Out<typeof InterfaceEntry>;
export type Segment = Out<typeof SegmentEntry>;

export type Entry = { kind: 'host'; value: Host } | { kind: 'interface'; value: Iface } | { kind: 'segment'; value: Segment };

const KINDS = { hosts: ['host', HostEntry], interfaces: ['interface', InterfaceEntry], segments: ['segment', SegmentEntry] } as const;

/** The deployment's prefix. */
export function prefixOf(deployment: string): string {
  if (!/^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/.test(deployment)) throw new CheckError([], `deployment: "${deployment.slice(0, 80)}": expected 1 to 63 letters, digits, _ . -`);
  return `/fpo/${deployment}/`;
}

export function keyOf(deployment: string, kind: keyof typeof KINDS, entryName: string): string {
  return `${prefixOf(deployment)}${kind}/${entryName}`;
}

/** One entry read from etcd: its kind and checked value, or why it is refused. */
export function parseEntry(prefix: string, key: string, value: string): Entry | { error: string } {
  if (!key.startsWith(prefix)) return { error: `${key.slice(0, 200)}: not under ${prefix}` };
  const rest = key.slice(prefix.length).split('/');
  if (rest.length !== 2 || !Object.hasOwn(KINDS, rest[0])) return { error: `${key.slice(0, 200)}: expected ${prefix}{hosts,interfaces,segments}/NAME` };
  const [kind, check] = KINDS[rest[0] as keyof typeof KINDS];
  let json: unknown;
  try {
    json = JSON.parse(value);
  } catch {
    return { error: `${key.slice(0, 200)}: not JSON` };
  }
  try {
    const v = check(json, []) as { name: string };
    if (v.name !== rest[1]) return { error: `${key.slice(0, 200)}.name: "${v.name}", the key says "${rest[1].slice(0, 80)}"` };
    return { kind, value: v } as Entry;
  } catch (e) {
    if (!(e instanceof CheckError)) throw e;
    return { error: `${key.slice(0, 200)}${e.path.length ? `.${formatPath(e.path)}` : ''}: ${e.message}` };
  }
}


