/**
 * server — `blockrep serve`: the HTTP API of ../protocol in front of one repository folder.
 * Every request is authenticated and authorised before storage is touched; uploads are checked
 * (digests recomputed) before they are stored. Loaded only by the serve command.
 */
export { startRepositoryServer } from './start-server.js';
