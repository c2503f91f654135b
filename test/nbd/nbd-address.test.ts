import { describe, expect, it } from 'vitest';
import { formatNbdAddress, parseNbdAddress } from '../../src/nbd/index.js';
import { isBlockrepError } from '../../src/shared/blockrep-error.js';

describe('parseNbdAddress', () => {
  it('reads unix paths, host:port and NBD URIs', () => {
    expect(parseNbdAddress('unix:/run/x.sock')).toEqual({ address: { kind: 'unix', path: '/run/x.sock' } });
    expect(parseNbdAddress('/run/x.sock')).toEqual({ address: { kind: 'unix', path: '/run/x.sock' } });
    expect(parseNbdAddress('10.0.0.1:10809')).toEqual({ address: { kind: 'tcp', host: '10.0.0.1', port: 10809 } });
    expect(parseNbdAddress('[::1]:2000')).toEqual({ address: { kind: 'tcp', host: '::1', port: 2000 } });
    expect(parseNbdAddress('nbd://host/disk%200')).toEqual({ address: { kind: 'tcp', host: 'host', port: 10809 }, exportName: 'disk 0' });
    expect(parseNbdAddress('nbd://[::1]:99/')).toEqual({ address: { kind: 'tcp', host: '::1', port: 99 }, exportName: '' });
    expect(parseNbdAddress('nbd+unix:///vda?socket=/run/b.sock')).toEqual({ address: { kind: 'unix', path: '/run/b.sock' }, exportName: 'vda' });
    expect(formatNbdAddress({ kind: 'tcp', host: '::1', port: 5 })).toBe('[::1]:5');
  });

  it('refuses what is not an address with USAGE', () => {
    for (const bad of ['', 'host', 'host:0', 'host:99999', 'a:b:c', 'unix:', 'nbd+unix:///x', 'nbd://:1/']) {
      let code: string | undefined;
      try {
        parseNbdAddress(bad);
      } catch (err) {
        code = isBlockrepError(err) ? err.code : 'other';
      }
      expect(code, bad).toBe('USAGE');
    }
  });
});
