/**
 * Errors of fpo: one class, one list of codes.
 *
 * Only config, files and the control plane throw. The fast path never does:
 * a bad packet is a drop with a reason (see drops.ts), not an exception.
 * Messages are short and specific: the file or field, the byte offset where
 * there is one, and what was expected.
 */

export const ERR = {
  FPO_ERR_BAD_CAPTURE: 'capture file is not valid',
  FPO_ERR_TRUNCATED_CAPTURE: 'capture file ends inside a record',
  FPO_ERR_LINKTYPE: 'capture link type is not supported',
  FPO_ERR_IO: 'file cannot be read or written',
  FPO_ERR_BAD_TOPOLOGY: 'topology is not valid',
  FPO_ERR_BAD_STATE: 'state file of fpo run cannot be used',
  FPO_ERR_USAGE: 'command line is not valid',
  FPO_ERR_CAPACITY: 'a table is full',
  FPO_ERR_BAD_FILTER: 'capture filter is not valid',
  FPO_ERR_DEPENDENCY: 'a library or native module fpo needs cannot be loaded',
  FPO_ERR_WORKER: 'a datapath worker thread failed',
  FPO_ERR_BAD_INPUT: 'a message or line from outside is not valid',
  FPO_ERR_FW_STATE: "a firewall version's saved state cannot be restored",
} as const;

export type ErrCode = keyof typeof ERR;

export class FpoError extends Error {
  /** One of ERR's keys; stable, for scripts and tests. */
  readonly code: ErrCode;
  /** The file the error is about, when there is one. */
  readonly path?: string;
  /** Byte offset in `path` where the fault is, when known. */
  readonly offset?: number;

  constructor(code: ErrCode, message: string, where?: { path?: string; offset?: number }) {
    super(message);
    this.name = 'FpoError';
    this.code = code;
    this.path = where?.path;
    this.offset = where?.offset;
  }
}
