package io.streamrank.udf;

import java.nio.charset.StandardCharsets;
import java.security.GeneralSecurityException;
import java.util.HashMap;
import java.util.Map;

import javax.crypto.Mac;
import javax.crypto.spec.SecretKeySpec;

import org.apache.flink.table.functions.ScalarFunction;

/**
 * pseudonym(user_id, key_env): the pseudonymous id contract.keys.pseudonym gives, "p:" and the
 * first 32 hex digits of HMAC-SHA256(key, user_id's UTF-8 bytes), with the key read from the
 * environment variable key_env names (privacy.key_env). The SQL holds the variable's name only,
 * so the key never travels in the job graph; every TaskManager needs the variable.
 */
public class Pseudonym extends ScalarFunction {
    static final int MIN_KEY_BYTES = 32; // contract.config.MIN_PSEUDONYM_KEY_BYTES
    private static final char[] HEX = "0123456789abcdef".toCharArray();
    private final Map<String, Mac> macs = new HashMap<>();

    public String eval(String userId, String keyEnv) {
        if (userId == null) {
            return null;
        }
        return "p:" + hex(mac(keyEnv).doFinal(userId.getBytes(StandardCharsets.UTF_8)), 16);
    }

    Mac mac(String keyEnv) {
        Mac mac = macs.get(keyEnv);
        if (mac == null) {
            String key = System.getenv(keyEnv);
            byte[] bytes = key == null ? new byte[0] : key.getBytes(StandardCharsets.UTF_8);
            if (key != null && !key.chars().allMatch(c -> c < 128)) {
                throw new IllegalStateException("privacy.key_env names " + keyEnv + ", whose key is not ASCII in this "
                        + "TaskManager's environment; use a hex or base64 key (openssl rand -hex 32)");
            }
            if (bytes.length < MIN_KEY_BYTES) {
                throw new IllegalStateException("privacy.key_env names " + keyEnv + ", which is "
                        + (bytes.length == 0 ? "not set" : "shorter than 32 bytes")
                        + " in this TaskManager's environment; export it on every TaskManager (the same key as the job's "
                        + "submitter and the lookups)");
            }
            try {
                mac = Mac.getInstance("HmacSHA256");
                mac.init(new SecretKeySpec(bytes, "HmacSHA256"));
            } catch (GeneralSecurityException e) {
                throw new IllegalStateException("HMAC-SHA256 is not available in this JVM", e);
            }
            macs.put(keyEnv, mac);
        }
        return mac;
    }

    static String hex(byte[] digest, int bytes) {
        char[] out = new char[bytes * 2];
        for (int i = 0; i < bytes; i++) {
            out[2 * i] = HEX[(digest[i] >> 4) & 0xf];
            out[2 * i + 1] = HEX[digest[i] & 0xf];
        }
        return new String(out);
    }
}
