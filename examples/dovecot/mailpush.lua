-- mailpush.lua: Dovecot push_notification events to mailpush (POST /ingest/dovecot/lua).
--
-- For Dovecot 2.3.19 and newer (Lua 5.3/5.4): it uses Dovecot's built-in dovecot.http
-- client and a JSON encoder of its own, no Lua modules. Install with examples/dovecot/
-- mailpush.conf (mail_plugins and the plugin {} settings below), then `doveadm reload`.
--
--   plugin {
--     push_notification_driver = lua:file=/etc/dovecot/mailpush.lua
--     mailpush_url = http://127.0.0.1:8080/ingest/dovecot/lua   # required
--     mailpush_token = <mailpush's ingest.secret>                 # sent as a Bearer token
--     mailpush_timeout_msecs = 1000                                # optional, default 1000
--   }
--
-- One POST per committed mailbox transaction (one IMAP command in one folder, one LMTP
-- recipient, one folder operation), body:
--   {"v":1,"source":"dovecot-lua","user":..,"service":..,"session":..,"ts":<unix seconds>,
--    "inbox_unseen":<INBOX's unseen count, when the transaction touched INBOX>,
--    "events":[{"name":"MessageNew","mailbox":..,..},..],"truncated":<events left out>}
-- Each event object carries the fields Dovecot put in its event table. At most MAX_EVENTS
-- events go in one POST (a STORE on 10,000 messages would make a body of megabytes); the
-- rest are counted in "truncated": mailpush needs only that something changed, and the
-- badge count.
--
-- The POST is synchronous: the IMAP command or LMTP delivery waits for it, bounded by
-- mailpush_timeout_msecs. mailpush answers at once; if it is down, the connection is
-- refused at once too. Failures are logged and the batch is dropped (no retry queue): a
-- client that reconnects resyncs from IMAP, as with any push.

local MAX_SNIPPET = 1024
local MAX_EVENTS = 100

-- ---------------------------------------------------------------- JSON ----
local ARRAY_KEYS = { flags = true, flags_old = true, keywords = true,
                     keywords_old = true, events = true }

local function utf8_clean(s)
  -- Replace each invalid UTF-8 byte with U+FFFD (raw From/To headers may be
  -- 8-bit garbage). Bounded: every pass removes one invalid byte.
  for _ = 1, #s do
    local ok, pos = utf8.len(s)
    if ok then break end
    s = s:sub(1, pos - 1) .. "\u{FFFD}" .. s:sub(pos + 1)
  end
  return s
end

local ESC = { ['"'] = '\\"', ['\\'] = '\\\\', ['\b'] = '\\b', ['\f'] = '\\f',
              ['\n'] = '\\n', ['\r'] = '\\r', ['\t'] = '\\t' }

local function json_string(s)
  s = utf8_clean(tostring(s))
  return '"' .. s:gsub('[%c"\\]', function(c)
    return ESC[c] or string.format('\\u%04x', c:byte())
  end) .. '"'
end

local encode

local function json_number(n)
  -- Dovecot pushes uid, uid_validity, date and tz with lua_pushnumber, so
  -- in Lua 5.3+ they are floats (1.0). Print integral values as integers.
  if n ~= n or n == math.huge or n == -math.huge then return 'null' end
  if math.type(n) == 'integer' then return tostring(n) end
  if n == math.floor(n) and math.abs(n) < 2^53 then
    return string.format('%d', math.tointeger(n))
  end
  return string.format('%.17g', n)
end

local function json_table(t, as_array)
  if as_array or (next(t) ~= nil and #t > 0) then
    local out = {}
    for i = 1, #t do out[i] = encode(t[i]) end
    return '[' .. table.concat(out, ',') .. ']'
  end
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = tostring(k) end
  table.sort(keys)
  local out = {}
  for _, k in ipairs(keys) do
    local v = t[k]
    out[#out + 1] = json_string(k) .. ':' .. encode(v, ARRAY_KEYS[k])
  end
  return '{' .. table.concat(out, ',') .. '}'
end

encode = function(v, as_array)
  local ty = type(v)
  if ty == 'nil' then return 'null'
  elseif ty == 'boolean' then return v and 'true' or 'false'
  elseif ty == 'number' then return json_number(v)
  elseif ty == 'string' then return json_string(v)
  elseif ty == 'table' then return json_table(v, as_array)
  end
  return json_string(tostring(v))
end

-- ------------------------------------------------------------ Dovecot ----
function script_init()
  return 0
end

function dovecot_lua_notify_begin_txn(user)
  return {
    mail_user = user,
    user = user.username,
    service = user.service,
    session = user.session_id,
    url = user:plugin_getenv("mailpush_url"),
    token = user:plugin_getenv("mailpush_token"),
    timeout = tonumber(user:plugin_getenv("mailpush_timeout_msecs") or "") or 1000,
    events = {},
    truncated = 0,
    touched_inbox = false,
  }
end

local function collect(ctx, event)
  if event.mailbox == "INBOX" then ctx.touched_inbox = true end
  if #ctx.events >= MAX_EVENTS then
    ctx.truncated = ctx.truncated + 1
    return
  end
  local e = {}
  for k, v in pairs(event) do e[k] = v end
  if type(e.snippet) == 'string' and #e.snippet > MAX_SNIPPET then
    e.snippet = e.snippet:sub(1, MAX_SNIPPET)
  end
  table.insert(ctx.events, e)
end

-- INBOX's unseen count now (the transaction is committed), for the phone's badge; nil if
-- it cannot be read.
local function inbox_unseen(mail_user)
  local ok, unseen = pcall(function()
    local box = mail_user:mailbox("INBOX")
    local status = box:status(dovecot.storage.STATUS_UNSEEN)
    box:free()
    return status.unseen
  end)
  if ok then return unseen end
  dovecot.i_error("mailpush: cannot read INBOX's unseen count: " .. tostring(unseen))
  return nil
end

-- A handler must exist for Dovecot to subscribe to the event at all.
dovecot_lua_notify_event_message_new = collect
dovecot_lua_notify_event_message_append = collect
dovecot_lua_notify_event_message_expunge = collect
dovecot_lua_notify_event_message_read = collect
dovecot_lua_notify_event_message_trash = collect
dovecot_lua_notify_event_flags_set = collect
dovecot_lua_notify_event_flags_clear = collect
dovecot_lua_notify_event_mailbox_create = collect
dovecot_lua_notify_event_mailbox_delete = collect
dovecot_lua_notify_event_mailbox_rename = collect
dovecot_lua_notify_event_mailbox_subscribe = collect
dovecot_lua_notify_event_mailbox_unsubscribe = collect

function dovecot_lua_notify_end_txn(ctx, success)
  if not success or #ctx.events == 0 then return end
  if ctx.url == nil or ctx.url == '' then
    dovecot.i_error("mailpush: mailpush_url not set, dropping "
                    .. #ctx.events .. " event(s)")
    return
  end
  local unseen = nil
  if ctx.touched_inbox then unseen = inbox_unseen(ctx.mail_user) end
  local body = encode({ v = 1, source = "dovecot-lua", user = ctx.user,
                        service = ctx.service, session = ctx.session,
                        ts = os.time(), events = ctx.events,
                        inbox_unseen = unseen, truncated = ctx.truncated })
  local client = dovecot.http.client({
    request_timeout_msecs = ctx.timeout,
    connect_timeout_msecs = ctx.timeout,
    max_attempts = 1,
    user_agent = "mailpush.lua/1",
  })
  local req = client:request({ url = ctx.url, method = "POST" })
  req:add_header("Content-Type", "application/json")
  if ctx.token ~= nil and ctx.token ~= '' then
    req:add_header("Authorization", "Bearer " .. ctx.token)
  end
  req:set_payload(body)
  local resp = req:submit()
  local status = resp:status()
  if status < 200 or status >= 300 then
    dovecot.i_error(string.format("mailpush: POST %s failed: %d %s (%d event(s) dropped)",
                    ctx.url, status, tostring(resp:reason()), #ctx.events))
  end
end
