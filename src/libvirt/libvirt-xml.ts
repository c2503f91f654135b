import { XMLParser } from 'fast-xml-parser';
import type { z } from 'zod';
import { BlockrepError } from '../shared/index.js';

/**
 * Reads XML that libvirt wrote (domain, checkpoint, backup job definitions) into a value of
 * `schema`: attributes as `@_name`, names and paths kept as strings ("123" is a valid domain
 * name), the elements at `arrays` (dotted paths) always lists. Anything else is LIBVIRT_ERROR
 * naming `what` and the first mismatch.
 */
export function xmlReader<S extends z.ZodType>(schema: S, arrays: readonly string[]): (xml: string, what: string) => z.infer<S> {
  const paths = new Set(arrays);
  const parser = new XMLParser({
    ignoreAttributes: false,
    attributeNamePrefix: '@_',
    parseTagValue: false,
    parseAttributeValue: false,
    isArray: (_name, jpath) => paths.has(String(jpath)),
  });
  return (xml, what) => {
    let tree: unknown;
    try {
      tree = parser.parse(xml);
    } catch (err) {
      throw new BlockrepError('LIBVIRT_ERROR', `${what} is not XML libvirt would write: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
    }
    const parsed = schema.safeParse(tree);
    if (!parsed.success) {
      const issue = parsed.error.issues[0];
      throw new BlockrepError('LIBVIRT_ERROR', `${what} does not have the shape blockrep expects: ${issue ? `${issue.path.join('.')}: ${issue.message}` : 'invalid'}`);
    }
    return parsed.data;
  };
}
