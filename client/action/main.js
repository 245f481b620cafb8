// Main step: obtain what the inputs ask for; mask each value, then set it. Lease ids go to the
// step state as soon as each credential is obtained, so the post step revokes them even when a
// later exchange fails.
'use strict';
const { input, mask, fileCommand, nhi, fail } = require('./lib');

function main() {
  if (!input('url')) return fail('the `url` input is required');
  const lifetime = [];
  if (input('scope')) lifetime.push('--scope', input('scope'));
  if (input('expires-in')) lifetime.push('--expires-in', input('expires-in'));
  const leases = [];
  const obtained = (lease) => {
    leases.push(lease);
    fileCommand('GITHUB_STATE', 'leases', leases.join(' '));
    fileCommand('GITHUB_OUTPUT', 'lease-ids', leases.join(' '));
  };
  if (!input('audience') && !input('secret') && !input('role')) {
    return fail('nothing to obtain: set `audience`, `secret` or `role`');
  }
  if (input('audience')) {
    const issued = nhi(['token', '--audience', input('audience'), ...lifetime]);
    mask(issued.access_token);
    obtained(issued.lease_id);
    fileCommand('GITHUB_OUTPUT', 'token', issued.access_token);
  }
  if (input('secret')) {
    const issued = nhi(['secret', 'get', input('secret'), ...lifetime]);
    mask(issued.access_token);
    obtained(issued.lease_id);
    fileCommand('GITHUB_OUTPUT', 'secret', issued.access_token);
  }
  if (input('role')) {
    const issued = nhi(['aws', 'credentials', '--role-arn', input('role'), ...lifetime]);
    const values = {
      AWS_ACCESS_KEY_ID: issued.aws_access_key_id,
      AWS_SECRET_ACCESS_KEY: issued.aws_secret_access_key,
      AWS_SESSION_TOKEN: issued.access_token,
    };
    Object.values(values).forEach(mask);
    obtained(issued.lease_id);
    // As aws-actions/configure-aws-credentials: later steps' AWS SDKs and CLI pick these up.
    for (const [name, value] of Object.entries(values)) fileCommand('GITHUB_ENV', name, value);
    if (input('aws-region')) {
      fileCommand('GITHUB_ENV', 'AWS_REGION', input('aws-region'));
      fileCommand('GITHUB_ENV', 'AWS_DEFAULT_REGION', input('aws-region'));
    }
    fileCommand('GITHUB_OUTPUT', 'aws-access-key-id', values.AWS_ACCESS_KEY_ID);
    fileCommand('GITHUB_OUTPUT', 'aws-secret-access-key', values.AWS_SECRET_ACCESS_KEY);
    fileCommand('GITHUB_OUTPUT', 'aws-session-token', values.AWS_SESSION_TOKEN);
  }
}

try {
  main();
} catch (error) {
  fail(`nhi-broker: ${error.message.split('\n')[0]}`);
}
