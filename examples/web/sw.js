// mailpush's Web Push service worker: shows new mail and reminders, and tells open pages about
// every state change (they resync, as they would on an EventSource `push` event).
//
// Payloads ("legacy" subscriptions): {"mailModSeq", "calendarModSeq", "contactsModSeq",
// "unseen"?, "alert"?: {"type": "mail", "from", "subject", "url"} | {"type": "reminder",
// "summary", "start"}}. "jmap" subscriptions get an RFC 8620 StateChange instead.
'use strict';

self.addEventListener('install', () => self.skipWaiting());
self.addEventListener('activate', event => event.waitUntil(self.clients.claim()));

self.addEventListener('push', event => {
  let data = {};
  try { data = event.data ? event.data.json() : {}; } catch (err) { data = {}; }
  event.waitUntil((async () => {
    const pages = await self.clients.matchAll({ type: 'window', includeUncontrolled: true });
    for (const page of pages) page.postMessage({ type: 'mailpush', data });
    const alert = data.alert;
    if (alert && alert.type === 'mail') {
      await self.registration.showNotification(alert.from || 'New mail', {
        body: alert.subject || '',
        tag: 'mail',
        renotify: true,
        data: { url: alert.url || '' },
      });
    } else if (alert && alert.type === 'reminder') {
      await self.registration.showNotification(alert.summary || 'Reminder', {
        body: alert.start || '',
        tag: 'reminder',
      });
    } else if (data['@type'] === 'StateChange' && !pages.some(page => page.visibilityState === 'visible')) {
      // Browsers require a notification for a push when no page is visible.
      const delivered = Object.values(data.changed || {}).some(types => 'EmailDelivery' in types);
      if (delivered) await self.registration.showNotification('New mail', { tag: 'mail' });
    }
  })());
});

self.addEventListener('notificationclick', event => {
  event.notification.close();
  event.waitUntil((async () => {
    const pages = await self.clients.matchAll({ type: 'window' });
    if (pages.length) return pages[0].focus();
    return self.clients.openWindow('./push.html');
  })());
});
