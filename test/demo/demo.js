// The demo page: one pusher-js client per Herald node, each in its own panel,
// so an event sent through one node visibly arrives through all the others.
// Every element a test reads carries a data attribute or a class named for it.
(async function main() {
  const config = await (await fetch('/config.json')).json();
  const tab = Math.random().toString(36).slice(2, 6);
  const panels = document.getElementById('nodes');
  const template = document.getElementById('node-panel');
  const via = document.getElementById('via');

  for (const node of config.nodes) {
    const option = document.createElement('option');
    option.value = node.name;
    option.textContent = `${node.name} (${node.host}:${node.port})`;
    via.append(option);

    const panel = template.content.firstElementChild.cloneNode(true);
    panel.dataset.node = node.name;
    panel.dataset.state = 'connecting';
    panel.querySelector('.name').textContent = node.name;
    panel.querySelector('.addr').textContent = `ws://${node.host}:${node.port}`;
    panels.append(panel);

    const user = `${node.name}-viewer-${tab}`;
    const pusher = new Pusher(config.key, {
      wsHost: node.host,
      wsPort: node.port,
      forceTLS: false,
      enabledTransports: ['ws'],
      disableStats: true,
      cluster: 'mt1',
      channelAuthorization: { endpoint: '/auth', transport: 'ajax', params: { user } },
    });


    const presence = pusher.subscribe('presence-demo');
    const showMembers = () => {
      const list = panel.querySelector('.members');
      const ids = [];
      presence.members.each((m) => ids.push(m.id));
      ids.sort();
      list.replaceChildren(
        ...ids.map((id) => {
          const li = document.createElement('li');
          li.textContent = id === user ? `${id} (this panel)` : id;
          li.dataset.member = id;
          return li;
        }),
      );
      panel.querySelector('.member-count').textContent = String(ids.length);
    };
    pusher.connection.bind('state_change', ({ current }) => {
      panel.dataset.state = current;
      panel.querySelector('.state').textContent = current;
      panel.querySelector('.socket').textContent = current === 'connected' ? pusher.connection.socket_id : '–';
      // Members shown while disconnected would be stale: clear them until
      // the resubscription's snapshot arrives.
      if (current !== 'connected') {
        panel.querySelector('.members').replaceChildren();
        panel.querySelector('.member-count').textContent = '–';
      }
    });
    presence.bind('pusher:subscription_succeeded', showMembers);
    presence.bind('pusher:member_added', showMembers);
    presence.bind('pusher:member_removed', showMembers);

    pusher.subscribe('demo').bind('message', (data) => {
      const li = document.createElement('li');
      li.dataset.text = String(data.text);
      li.append(`${data.text} `);
      const meta = document.createElement('small');
      meta.textContent = `sent through ${data.via}, received on ${node.name} at ${new Date().toLocaleTimeString()}`;
      li.append(meta);
      panel.querySelector('.events').prepend(li);
    });
  }

  document.getElementById('send').addEventListener('submit', async (e) => {
    e.preventDefault();
    const input = document.getElementById('message');
    const status = document.getElementById('send-status');
    const body = { node: via.value, channel: 'demo', event: 'message', data: { text: input.value, via: via.value } };
    status.textContent = 'sending…';
    const answer = await fetch('/trigger', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(body),
    });
    const result = await answer.json();
    status.textContent = answer.ok ? `sent through ${result.node} (HTTP ${result.status})` : `failed: ${JSON.stringify(result)}`;
    status.dataset.ok = String(answer.ok);
    if (answer.ok) input.value = '';
  });
  document.body.dataset.ready = 'true';
})();
