// Post step (runs when the job ends, whatever its outcome): revoke every lease the main step
// obtained, by lease id with this job's own OIDC token as the holder's proof. A failed revocation
// fails the step: a credential left alive must be seen (it still expires on its own).
'use strict';
const { nhi, fail } = require('./lib');

const leases = (process.env.STATE_leases || '').split(' ').filter(Boolean);
if (leases.length > 0) {
  try {
    nhi(['revoke', ...leases]);
    process.stdout.write(`nhi-broker: revoked ${leases.length} lease(s)\n`);
  } catch (error) {
    fail(`nhi-broker: could not revoke ${leases.join(' ')}: ${error.message.split('\n')[0]}`);
  }
}
