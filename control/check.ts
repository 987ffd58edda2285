/**
 * Checks for JSON config (topology, events): a few combinators that validate
 * a parsed value and give back a typed copy with defaults filled in, or
 * throw a CheckError naming the first field that is wrong and why.
 *
 * Why not zod (which this replaced for the topology and events): loading
 * zod and building the topology's schema took 100-130 ms of a 0.24 s
 * 671-packet replay here, measured with timed imports (zod 55-90 ms, the
 * schema 27-41 ms, its first parse 7 ms); these checks load and run in
 * under 1 ms. Messages follow zod's wording ("Invalid input: expected
 * number, received string", "Too big: expected number to be <=4095",
 * "Unrecognized key: \"speed\"") so errors read as they did, and say more
 * where zod said only "Invalid input" (a value of a union).
 */

/** A path into the checked value: keys and array indices. */
export type Path = (string | number)[];

export class CheckError extends Error {
  constructor(readonly path: Path, message: string) {
    super(message);
    this.name = 'CheckError';
  }
}

/** Validates `v` (found at `path`) and returns it, typed, defaults filled. */
export type Check<T> = ((v: unknown, path: Path) => T) & { optional?: true };

/** A check whose key an object may leave out (its type has `?`). */
export type OptionalCheck<T> = Check<T | undefined> & { optional: true };

/** The type a check gives. */
export type Out<C> = C extends Check<infer T> ? T : never;

/** What JSON.parse can give, named as zod names it ("array", "null", "NaN" …). */
function kind(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'array';
  if (typeof v === 'number') return Number.isNaN(v) ? 'NaN' : Number.isFinite(v) ? 'number' : 'Infinity';
  return typeof v;
}

function expected(what: string, v: unknown, path: Path): CheckError {
  return new CheckError(path, `Invalid input: expected ${what}, received ${kind(v)}`);
}

export function string(opts: { regex?: RegExp; message?: string; min?: number; max?: number } = {}): Check<string> {
  return (v, path) => {
    if (typeof v !== 'string') throw expected('string', v, path);
    if (opts.min !== undefined && v.length < opts.min) throw new CheckError(path, `Too small: expected string to have >=${opts.min} characters`);
    if (opts.max !== undefined && v.length > opts.max) throw new CheckError(path, `Too big: expected string to have <=${opts.max} characters`);
    if (opts.regex && !opts.regex.test(v)) throw new CheckError(path, opts.message ?? `Invalid string: must match pattern ${opts.regex}`);
    return v;
  };
}

/** A finite number; `int` an integer; `min`/`max` inclusive. */
export function number(opts: { int?: boolean; min?: number; max?: number } = {}): Check<number> {
  return (v, path) => {
    if (typeof v !== 'number' || !Number.isFinite(v)) throw expected('number', v, path);
    if (opts.int && !Number.isInteger(v)) throw expected('int', v, path);
    if (opts.min !== undefined && v < opts.min) throw new CheckError(path, `Too small: expected number to be >=${opts.min}`);
    if (opts.max !== undefined && v > opts.max) throw new CheckError(path, `Too big: expected number to be <=${opts.max}`);
    return v;
  };
}

/**
 * An integer in min..max. Out of range, fractional or not a finite number,
 * the message gives the range ("expected an integer in 0..4095, got 1e+21"),
 * which says more than zod's "Too big: expected number to be <=4095".
 */
export function int(min: number, max: number): Check<number> {
  return (v, path) => {
    if (typeof v !== 'number') throw expected(`an integer in ${min}..${max}`, v, path);
    if (!Number.isInteger(v) || v < min || v > max) throw new CheckError(path, `Invalid input: expected an integer in ${min}..${max}, got ${Number.isFinite(v) ? String(v) : kind(v)}`);
    return v;
  };
}

export function boolean(): Check<boolean> {
  return (v, path) => {
    if (typeof v !== 'boolean') throw expected('boolean', v, path);
    return v;
  };
}

/** One of the given strings or numbers. */
export function oneOf<const T extends readonly (string | number)[]>(values: T): Check<T[number]> {
  return (v, path) => {
    if (!values.includes(v as T[number])) throw new CheckError(path, `Invalid option: expected one of ${values.map((x) => JSON.stringify(x)).join('|')}`);
    return v as T[number];
  };
}

export function array<T>(item: Check<T>, opts: { min?: number } = {}): Check<T[]> {
  return (v, path) => {
    if (!Array.isArray(v)) throw expected('array', v, path);
    if (opts.min !== undefined && v.length < opts.min) throw new CheckError(path, `Too small: expected array to have >=${opts.min} items`);
    const out: T[] = [];
    for (let i = 0; i < v.length; i++) out.push(item(v[i], [...path, i]));
    return out;
  };
}

type Shape = Record<string, Check<unknown>>;
type Flat<T> = { [K in keyof T]: T[K] };
/** An object type from a shape: keys of optional checks get `?`. */
export type ObjectOf<S extends Shape> = Flat<
  { [K in keyof S as S[K] extends { optional: true } ? never : K]: Out<S[K]> } &
  { [K in keyof S as S[K] extends { optional: true } ? K : never]?: Exclude<Out<S[K]>, undefined> }
>;

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/**
 * An object with exactly these keys (an unknown key is an error, as zod's
 * strictObject); checked in shape order. Only the value's own keys count: a
 * key the value lacks is undefined even when Object.prototype has it, and a
 * "__proto__" that JSON.parse made an own key is an unknown key like any.
 */
export function object<S extends Shape>(shape: S): Check<ObjectOf<S>> {
  const keys = Object.keys(shape);
  return (v, path) => {
    if (!isObject(v)) throw expected('object', v, path);
    const out: Record<string, unknown> = {};
    for (const k of keys) {
      const x = shape[k](Object.hasOwn(v, k) ? v[k] : undefined, [...path, k]);
      if (x !== undefined) out[k] = x;
    }
    const extra = Object.keys(v).filter((k) => !Object.hasOwn(shape, k));
    if (extra.length) throw new CheckError(path, `Unrecognized key${extra.length > 1 ? 's' : ''}: ${extra.map((k) => JSON.stringify(k)).join(', ')}`);
    return out as ObjectOf<S>;
  };
}

/**
 * An object whose values all pass `value`, given back as a null-prototype
 * object: its keys are the user's text, and on a plain object a key
 * "__proto__" would set the prototype instead of a key (a rule's
 * {"__proto__": …} match came out empty, a match-all), and a lookup of
 * "toString" would find Object.prototype's. With `keys`, any other key is
 * refused by name: `unknown field "__proto__"; expected one of …`.
 */
export function record<T>(value: Check<T>, opts: { keys?: readonly string[] } = {}): Check<Record<string, T>> {
  return (v, path) => {
    if (!isObject(v)) throw expected('object', v, path);
    const out = Object.create(null) as Record<string, T>;
    for (const [k, x] of Object.entries(v)) {
      if (opts.keys !== undefined && !opts.keys.includes(k)) throw new CheckError(path, `unknown field ${JSON.stringify(k)}; expected one of ${opts.keys.join(', ')}`);
      out[k] = value(x, [...path, k]);
    }
    return out;
  };
}

/** The first of the checks that passes; when none does, `message` (or the first check's error). */
export function either<A, B>(a: Check<A>, b: Check<B>, message?: string): Check<A | B> {
  return (v, path) => {
    try {
      return a(v, path);
    } catch (ea) {
      try {
        return b(v, path);
      } catch {
        if (message !== undefined) throw new CheckError(path, `Invalid input: ${message}, received ${kind(v)}`);
        throw ea;
      }
    }
  };
}

/** The value may be left out (undefined). */
export function optional<T>(c: Check<T>): OptionalCheck<T> {
  const f = ((v: unknown, path: Path) => (v === undefined ? undefined : c(v, path))) as OptionalCheck<T>;
  f.optional = true;
  return f;
}

/** Left out: `make()` (a fresh value each time, never shared between results). */
export function withDefault<T>(c: Check<T>, make: () => NoInfer<T>): Check<T> {
  return (v, path) => (v === undefined ? make() : c(v, path));
}

/** Passes the value to `ok` after `c`; false is an error with `message`. */
export function refine<T>(c: Check<T>, ok: (v: T) => boolean, message: string): Check<T> {
  return (v, path) => {
    const x = c(v, path);
    if (!ok(x)) throw new CheckError(path, message);
    return x;
  };
}

/** A path as the messages write it: `ports[2].ppid`, `(top level)` when empty. */
export function formatPath(path: Path): string {
  if (path.length === 0) return '(top level)';
  return path.map((p, i) => (typeof p === 'number' ? `[${p}]` : `${i ? '.' : ''}${p}`)).join('');
}
