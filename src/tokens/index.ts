/**
 * tokens — the tokens file of `blockrep serve`: names, disk prefixes and rights, secrets stored
 * hashed. Used by `blockrep token` and by the server's token store.
 */
export { ALL_DISKS, createToken, diskPrefixSchema, hashSecret, listTokens, readTokensFile, revokeToken, rightSchema, tokenNameSchema, type Right, type TokenEntry } from './tokens-file.js';
